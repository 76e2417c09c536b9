"""Property-based fuzz of the agent stream (AgentService.Connect) over real gRPC on loopback.

Each example opens a stream and sends a few AgentMessages built from the
descriptors with extreme and malformed contents (random first message kind,
Hello with empty/huge/unicode ids, negative and extreme capacities, label
maps far over the bounds, reports and task events about tasks that do not
exist), then closes its side. Properties:

- the stream ends OK (after Welcome, when the Hello was valid) or with a
  clear error code, never UNKNOWN or INTERNAL, and within its deadline;
- no Welcome, no registration: a refused Hello commits no RegisterNode;
- task events and reports never commit anything for tasks that are not
  placed on the sending node (there are no jobs in this cluster at all);
- the controller still answers afterwards.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.state import commands
from lepton.v1 import agent_pb2, control_pb2, control_pb2_grpc, types_pb2
from tests.support.background import BackgroundController
from tests.support.protofuzz import EDGE_LENGTHS, ints, messages, strings

CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FAST = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=True,
)
SOAK = settings(FAST, max_examples=2000, derandomize=False)
CONNECT = "/lepton.v1.AgentService/Connect"


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    # Long liveness timeouts: nodes the fuzz registers must not go suspect/down
    # (and commit status changes) while it runs.
    with BackgroundController(
        tmp_path_factory.mktemp("fuzz-agent"), suspect_after=3600.0, down_after=7200.0, failover_grace=7200.0
    ) as bg:
        yield bg


@pytest.fixture(scope="module")
def channel(controller):
    ch = grpc.insecure_channel(controller.address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    yield ch
    ch.close()


def good_hello(node_id: str) -> agent_pb2.Hello:
    return agent_pb2.Hello(
        node_id=node_id,
        hostname="h",
        address="127.0.0.1",
        capacity=types_pb2.Resources(cpu_millis=4000, memory_bytes=2**33, network_mbps=1000),
        agent_version="fuzz",
    )


def _hello_with(field_and_value) -> agent_pb2.AgentMessage:
    path, value = field_and_value
    h = good_hello("fz")
    obj = h
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    try:
        if leaf == "labels":
            obj.labels.update(value)
        else:
            setattr(obj, leaf, value)
    except (ValueError, TypeError):
        pass
    return agent_pb2.AgentMessage(hello=h)


BAD_HELLO = st.one_of(
    st.tuples(st.just("node_id"), strings()),
    st.tuples(st.just("hostname"), strings()),
    st.tuples(st.just("address"), strings()),
    st.tuples(st.just("capacity.cpu_millis"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("capacity.memory_bytes"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("capacity.gpus"), ints(-(2**31), 2**31 - 1)),
    st.tuples(st.just("reserve.cpu_millis"), ints(-(2**63), 2**63 - 1)),
    st.tuples(
        st.just("labels"),
        st.builds(
            lambda n, k, v: {f"k{i}".ljust(k, "x"): "v" * v for i in range(n)},
            st.sampled_from([1, 64, 65, 300]),
            st.sampled_from([2, 253, 254]),
            st.sampled_from(EDGE_LENGTHS[:9]),
        ),
    ),
    st.tuples(st.just("labels"), st.dictionaries(strings(), strings(), max_size=3)),
).map(_hello_with)

ANY_MESSAGE = messages(agent_pb2.AgentMessage.DESCRIPTOR)
FIRST = st.one_of(BAD_HELLO, ANY_MESSAGE)
STREAMS = st.tuples(FIRST, st.lists(ANY_MESSAGE, max_size=4))


def run_stream(channel, msgs) -> tuple[grpc.StatusCode, bool, str]:
    """Sends msgs, closes the request side, reads to the end: (code, got Welcome, details)."""
    stream = channel.stream_stream(
        CONNECT,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=agent_pb2.ControllerMessage.FromString,
    )
    welcomed = False
    try:
        for reply in stream(iter(msgs), timeout=20):
            welcomed = welcomed or reply.HasField("welcome")
    except grpc.RpcError as e:
        return e.code(), welcomed, e.details() or ""
    return grpc.StatusCode.OK, welcomed, ""


def new_commands(controller, since: int) -> list[str]:
    return controller.call(lambda h: [commands.kind(commands.decode(p)) for p in h.raft.proposals[since:]])


def check(controller, channel, msgs) -> tuple[grpc.StatusCode, bool]:
    before = controller.call(lambda h: len(h.raft.proposals))
    code, welcomed, details = run_stream(channel, msgs)
    assert code in CLEAR, (code, details, msgs[:1])
    kinds = new_commands(controller, before)
    if not welcomed:
        assert "register_node" not in kinds, (code, details, msgs[:1])
    # No jobs exist, so nothing an agent says may become a task update.
    assert not {"task_update", "task_updates"} & set(kinds)
    ctl = grpc.insecure_channel(controller.address)
    try:
        control_pb2_grpc.ControlServiceStub(ctl).GetClusterStatus(
            control_pb2.ClusterStatusRequest(), timeout=10
        )
    finally:
        ctl.close()
    return code, welcomed


@FAST
@given(STREAMS)
def test_agent_streams_with_malformed_messages_get_clear_answers(controller, channel, stream):
    first, rest = stream
    check(controller, channel, [first, *rest])


@FAST
@given(st.lists(ANY_MESSAGE, max_size=6))
def test_valid_hello_then_anything(controller, channel, rest):
    code, welcomed = check(controller, channel, [agent_pb2.AgentMessage(hello=good_hello("fuzz-ok")), *rest])
    assert welcomed and code == grpc.StatusCode.OK


def test_first_message_must_be_hello(controller, channel):
    report = agent_pb2.AgentMessage(report=agent_pb2.Report(time_ms=1))
    code, welcomed = check(controller, channel, [report])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and not welcomed
    code, welcomed = check(controller, channel, [agent_pb2.AgentMessage()])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and not welcomed


def test_oversized_hello_is_resource_exhausted(controller, channel):
    h = good_hello("big")
    h.labels.update({f"k{i}": "v" * 1000 for i in range(5000)})
    code, welcomed = check(controller, channel, [agent_pb2.AgentMessage(hello=h)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and not welcomed


@pytest.mark.soak
@SOAK
@given(STREAMS)
def test_soak_agent_streams(controller, channel, stream):
    first, rest = stream
    check(controller, channel, [first, *rest])
