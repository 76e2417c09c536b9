"""Property-based fuzz of ControlService over real gRPC on loopback (hypothesis).

Every RPC gets requests built from its descriptor with extreme and malformed
values (integer bounds, negative numbers, unknown enum values, empty, huge,
unicode and control-character strings, long lists and label maps), plus job
specs that are valid except for one field. Properties, for every request:

- the answer is OK or a clear error code (INVALID_ARGUMENT, NOT_FOUND,
  ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), never UNKNOWN
  or INTERNAL;
- a refused request commits nothing (the Raft stand-in records every
  committed proposal; nothing else proposes while the cluster has no node);
- the server still answers afterwards.

The default run keeps the example counts small; `-m soak` runs many more.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton.v1 import control_pb2, types_pb2
from tests.support.background import BackgroundController
from tests.support.protofuzz import EDGE_LENGTHS, ints, messages, strings

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=True,
)
SOAK = settings(FAST, max_examples=3000, derandomize=False)


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    with BackgroundController(tmp_path_factory.mktemp("fuzz-api")) as bg:
        yield bg


@pytest.fixture(scope="module")
def channel(controller):
    ch = grpc.insecure_channel(controller.address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    yield ch
    ch.close()


def call(channel, method, request) -> tuple[grpc.StatusCode, str]:
    path = f"/{SERVICE.full_name}/{method.name}"
    resp = message_factory.GetMessageClass(method.output_type)
    kw = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=resp.FromString)
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, **kw)(request, timeout=10):
                pass
        else:
            channel.unary_unary(path, **kw)(request, timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def committed(controller) -> int:
    return controller.call(lambda h: len(h.raft.proposals))


def check(controller, channel, method, request) -> grpc.StatusCode:
    before = committed(controller)
    code, details = call(channel, method, request)
    assert code in CLEAR, (method.name, code, details, request)
    if code != grpc.StatusCode.OK:
        assert committed(controller) == before, f"{method.name} refused ({code}) but committed something"
    alive, _ = call(channel, SERVICE.methods_by_name["GetClusterStatus"], control_pb2.ClusterStatusRequest())
    assert alive == grpc.StatusCode.OK
    return code


def _request(method):
    req = messages(method.input_type)
    if method.name == "WatchEvents":
        # A followed stream never ends by itself; follow mode is checked separately.
        req = req.map(lambda r: (r.ClearField("follow"), r)[1])
    return req.map(lambda r: (method, r))


ANY_REQUEST = st.sampled_from(list(SERVICE.methods)).flatmap(_request)


def valid_spec() -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name="web",
        count=1,
        priority=1,
        template=types_pb2.TaskTemplate(
            command="sleep",
            args=["60"],
            resources=types_pb2.Resources(cpu_millis=100, memory_bytes=2**20),
        ),
    )


def _mutate(spec: types_pb2.JobSpec, path: str, value) -> types_pb2.JobSpec:
    obj = spec
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    field = obj.DESCRIPTOR.fields_by_name[leaf]
    try:
        if field.is_repeated and field.message_type is None:
            getattr(obj, leaf).extend(value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(obj, leaf).update(value)
        else:
            setattr(obj, leaf, value)
    except (ValueError, TypeError):
        pass
    return spec


def _huge_map(n: int, key_len: int, val_len: int) -> dict[str, str]:
    return {f"k{i}".ljust(key_len, "x"): "v" * val_len for i in range(n)}


ONE_BAD_FIELD = st.one_of(
    st.tuples(st.just("name"), strings()),
    st.tuples(st.just("count"), ints(-(2**31), 2**31 - 1)),
    st.tuples(st.just("priority"), ints(-(2**31), 2**31 - 1)),
    st.tuples(st.just("type"), ints(-(2**31), 2**31 - 1)),
    st.tuples(st.just("template.command"), strings()),
    st.tuples(st.just("template.args"), st.lists(strings(), max_size=3)),
    st.tuples(st.just("template.working_dir"), strings()),
    st.tuples(st.just("template.env"), st.dictionaries(strings(), strings(), max_size=3)),
    st.tuples(st.just("template.resources.cpu_millis"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("template.resources.memory_bytes"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("template.resources.network_mbps"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("template.resources.gpus"), ints(-(2**31), 2**31 - 1)),
    st.tuples(st.just("template.kill_timeout_ms"), ints(-(2**63), 2**63 - 1)),
    st.tuples(st.just("template.restart.max_restarts"), ints(-(2**31), 2**31 - 1)),
    st.tuples(
        st.just("meta"),
        st.builds(
            _huge_map,
            st.sampled_from([1, 64, 65, 500]),
            st.sampled_from([2, 253, 254]),
            st.sampled_from(EDGE_LENGTHS[:8]),
        ),
    ),
    st.tuples(st.just("meta"), st.dictionaries(strings(), strings(), max_size=3)),
)


@FAST
@given(ANY_REQUEST)
def test_any_request_to_any_rpc_gets_a_clear_answer(controller, channel, method_and_request):
    method, request = method_and_request
    check(controller, channel, method, request)


@FAST
@given(ONE_BAD_FIELD, strings())
def test_job_specs_with_one_extreme_field(controller, channel, bad, request_id):
    path, value = bad
    spec = _mutate(valid_spec(), path, value)
    # Unique valid names for the ones that pass, so later examples are not just ALREADY_EXISTS.
    if path != "name":
        spec.name = f"j{committed(controller)}"
    req = control_pb2.SubmitJobRequest(spec=spec, request_id=request_id if len(request_id) < 300 else "")
    check(controller, channel, SERVICE.methods_by_name["SubmitJob"], req)


def test_message_above_the_limit_is_resource_exhausted(controller, channel):
    spec = valid_spec()
    spec.meta.update({f"k{i}": "v" * 1000 for i in range(5000)})  # ~5 MB > 4 MiB default
    code = check(
        controller, channel, SERVICE.methods_by_name["SubmitJob"], control_pb2.SubmitJobRequest(spec=spec)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_follow_mode_watch_with_bad_filters_is_refused_at_once(controller, channel):
    method = SERVICE.methods_by_name["WatchEvents"]
    for req in (
        control_pb2.WatchEventsRequest(follow=True, limit=-1),
        control_pb2.WatchEventsRequest(follow=True, types=["x"] * 65),
        control_pb2.WatchEventsRequest(follow=True, node_id="\x00"),
    ):
        assert call(channel, method, req)[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.soak
@SOAK
@given(ANY_REQUEST)
def test_soak_any_request(controller, channel, method_and_request):
    method, request = method_and_request
    check(controller, channel, method, request)


def test_regression_drain_deadline_near_int64_max_is_invalid_not_internal(controller, channel):
    """Found by the soak: now + deadline overflowed the command's int64 and gave INTERNAL."""
    req = control_pb2.DrainNodeRequest(id="n1", deadline_ms=2**63 - 1)
    code = check(controller, channel, SERVICE.methods_by_name["DrainNode"], req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
