"""Tokens, roles and TLS identities on a real gRPC server (in-process controller on the Raft stand-in).

Covers: no or unknown token -> UNAUTHENTICATED; a reader may list and watch
but not submit (PERMISSION_DENIED); an operator may; an agent token connects
only as its own node; with mutual TLS an agent's certificate must name its
node, a certificate of another CA or none at all cannot even connect;
RegisterMember accepts a replica's own certificate; refusals are counted and
logged without the token; nothing refused is committed.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from controller.security import auth, limits
from controller.state import commands
from lepton import tls
from lepton.v1 import agent_pb2, agent_pb2_grpc, control_pb2, control_pb2_grpc, types_pb2
from tests.support.fake_agent import hello
from tests.support.inproc import inproc_controller
from tests.support.pki import make_pki

GiB = 2**30


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def spec(name="web") -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=name,
        count=1,
        template=types_pb2.TaskTemplate(
            command="sleep", args=["60"], resources=types_pb2.Resources(cpu_millis=100, memory_bytes=GiB)
        ),
    )


def md(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token else ()


def channel(h, pki, cert: str | None = None, foreign: bool = False, ca: bool = True) -> grpc.aio.Channel:
    if not ca:
        return grpc.aio.insecure_channel(h.server.address)
    crt, key = pki.cert(cert, foreign) if cert else (None, None)
    files = tls.TLSFiles(crt, key, (pki.foreign if foreign else pki.dir) / "ca.crt")
    return grpc.aio.secure_channel(h.server.address, tls.channel_credentials(files))


async def code_of(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def connect(ch, node_id: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    """Opens an agent stream with Hello; OK when Welcome arrives."""
    stub = agent_pb2_grpc.AgentServiceStub(ch)
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(hello(node_id))

    async def requests():
        while True:
            msg = await queue.get()
            if msg is None:
                return
            yield msg

    call = stub.Connect(requests(), timeout=10, metadata=md(token))
    try:
        first = await call.read()
        if first is grpc.aio.EOF:
            return await call.code(), await call.details()
        assert first.HasField("welcome") and first.welcome.node_id == node_id
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    finally:
        call.cancel()


async def wait_leader(h):
    for _ in range(2000):
        if any(m.id == "c1" for m in h.state.members()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no leader")


async def test_tokens_and_roles_without_tls(tmp_path, pki, caplog):
    caplog.set_level(logging.WARNING, logger="lepton.controller.auth")
    before = auth.AUTH_FAILURES.snapshot()
    async with inproc_controller(tmp_path, tokens_file=pki.tokens_file) as h:
        await wait_leader(h)
        stub = control_pb2_grpc.ControlServiceStub(h.channel)
        submit = control_pb2.SubmitJobRequest(spec=spec(), request_id="r1")
        committed = len(h.raft.proposals)

        assert await code_of(stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        wrong = md("not-a-token-" + pki.tokens["alice"])
        assert (
            await code_of(stub.SubmitJob(submit, timeout=5, metadata=wrong))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        reader = md(pki.tokens["bob"])
        assert await code_of(stub.SubmitJob(submit, timeout=5, metadata=reader)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(
            stub.CordonNode(control_pb2.NodeRequest(id="n1"), timeout=5, metadata=reader)
        ) == (grpc.StatusCode.PERMISSION_DENIED)
        agent = md(pki.tokens["agent-n1"])
        assert await code_of(stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5, metadata=agent)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert len(h.raft.proposals) == committed, "a refused call reached the log"

        op = md(pki.tokens["alice"])
        job = await stub.SubmitJob(submit, timeout=5, metadata=op)
        assert job.job.spec.name == "web"
        listed = await stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5, metadata=reader)
        assert [j.id for j in listed.jobs] == [job.job.id]
        events = [
            e async for e in stub.WatchEvents(control_pb2.WatchEventsRequest(), timeout=5, metadata=reader)
        ]
        assert any(e.type.startswith("job.") for e in events)
        status = await stub.GetClusterStatus(control_pb2.ClusterStatusRequest(), timeout=5, metadata=reader)
        assert status.jobs_total == 1

    after = auth.AUTH_FAILURES.snapshot()
    assert after[auth.MISSING_TOKEN] > before[auth.MISSING_TOKEN]
    assert after[auth.INVALID_TOKEN] > before[auth.INVALID_TOKEN]
    assert after[auth.WRONG_ROLE] >= before[auth.WRONG_ROLE] + 3
    text = caplog.text
    assert "refused" in text
    for token in pki.tokens.values():
        assert token not in text


async def test_agent_tokens_bind_a_node(tmp_path, pki):
    async with inproc_controller(tmp_path, tokens_file=pki.tokens_file) as h:
        await wait_leader(h)
        ch = h.channel
        assert (await connect(ch, "n1", pki.tokens["agent-n1"]))[0] == grpc.StatusCode.OK
        code, details = await connect(ch, "n2", pki.tokens["agent-n1"])
        assert code == grpc.StatusCode.PERMISSION_DENIED and "n1" in details
        assert (await connect(ch, "n3", None))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert (await connect(ch, "n3", "bogus"))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert (await connect(ch, "n3", pki.tokens["bob"]))[0] == grpc.StatusCode.PERMISSION_DENIED
        # An operator may stand in for any node (tools, tests).
        assert (await connect(ch, "n4", pki.tokens["alice"]))[0] == grpc.StatusCode.OK
        assert sorted(n.id for n in h.state.nodes()) == ["n1", "n4"]


async def test_mutual_tls_agents_must_present_a_certificate_naming_their_node(tmp_path, pki):
    crt, key = pki.cert("c1")
    async with inproc_controller(
        tmp_path, tls_cert=crt, tls_key=key, tls_ca=pki.ca, tokens_file=pki.tokens_file
    ) as h:
        await wait_leader(h)
        token = pki.tokens["agent-n1"]
        async with channel(h, pki, "n1") as ch:
            assert (await connect(ch, "n1", token))[0] == grpc.StatusCode.OK
        async with channel(h, pki, "n2") as ch:  # the right token, somebody else's certificate
            code, details = await connect(ch, "n1", token)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "certificate" in details
        async with channel(h, pki, "n1", foreign=True) as ch:  # another CA: the handshake fails
            assert (await connect(ch, "n1", token))[0] == grpc.StatusCode.UNAVAILABLE
        async with channel(h, pki, None) as ch:  # no client certificate at all
            assert (await connect(ch, "n1", token))[0] == grpc.StatusCode.UNAVAILABLE
        async with channel(h, pki, ca=False) as ch:  # plain text against a TLS port
            assert (await connect(ch, "n1", token))[0] == grpc.StatusCode.UNAVAILABLE
        assert [n.id for n in h.state.nodes()] == ["n1"]


async def test_mutual_tls_without_tokens_still_binds_the_node_to_the_certificate(tmp_path, pki):
    crt, key = pki.cert("c1")
    async with inproc_controller(tmp_path, tls_cert=crt, tls_key=key, tls_ca=pki.ca) as h:
        await wait_leader(h)
        async with channel(h, pki, "n2") as ch:
            assert (await connect(ch, "n2", None))[0] == grpc.StatusCode.OK
            assert (await connect(ch, "n1", None))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_register_member_takes_a_replica_certificate_or_an_operator(tmp_path, pki):
    crt, key = pki.cert("c1")
    async with inproc_controller(
        tmp_path, tls_cert=crt, tls_key=key, tls_ca=pki.ca, tokens_file=pki.tokens_file
    ) as h:
        await wait_leader(h)

        def req(mid):
            return control_pb2.RegisterMemberRequest(
                id=mid, api_address="127.0.0.1:9", raft_address="127.0.0.1:8"
            )

        async with channel(h, pki, "c2") as ch:
            stub = control_pb2_grpc.ControlServiceStub(ch)
            assert await code_of(stub.RegisterMember(req("c2"), timeout=5)) == grpc.StatusCode.OK
            assert (
                await code_of(stub.RegisterMember(req("c3"), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
            )
            # A certificate is no token for anything else.
            assert await code_of(stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            reader = md(pki.tokens["bob"])
            assert await code_of(stub.RegisterMember(req("c3"), timeout=5, metadata=reader)) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            op = md(pki.tokens["alice"])
            assert await code_of(stub.RegisterMember(req("c3"), timeout=5, metadata=op)) == grpc.StatusCode.OK
        assert {m.id: m.api_address for m in h.state.members()}["c2"] == "127.0.0.1:9"


async def test_server_only_tls_lets_operators_in_with_a_token(tmp_path, pki):
    crt, key = pki.cert("c1")
    async with inproc_controller(
        tmp_path,
        tls_cert=crt,
        tls_key=key,
        tls_ca=pki.ca,
        tls_client_certs="none",
        tokens_file=pki.tokens_file,
    ) as h:
        await wait_leader(h)
        async with channel(h, pki, None) as ch:
            stub = control_pb2_grpc.ControlServiceStub(ch)
            op = md(pki.tokens["alice"])
            await stub.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5, metadata=op)
            assert await code_of(stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            # Agents are then identified by their node-bound tokens alone.
            assert (await connect(ch, "n1", pki.tokens["agent-n1"]))[0] == grpc.StatusCode.OK
            assert (await connect(ch, "n2", pki.tokens["agent-n1"]))[0] == grpc.StatusCode.PERMISSION_DENIED
        async with channel(h, pki, None, foreign=True) as ch:  # the server's certificate is not trusted
            stub = control_pb2_grpc.ControlServiceStub(ch)
            assert await code_of(stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5)) == (
                grpc.StatusCode.UNAVAILABLE
            )


async def test_submits_beyond_the_cluster_bounds_are_resource_exhausted(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_ACTIVE_JOBS", 1)
    monkeypatch.setattr(limits, "MAX_TASK_RECORDS", 3)
    async with inproc_controller(tmp_path) as h:
        await wait_leader(h)
        await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec("a")), timeout=5)
        committed = len(h.raft.proposals)
        err = await code_of(h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec("b")), timeout=5))
        assert err == grpc.StatusCode.RESOURCE_EXHAUSTED
        monkeypatch.setattr(limits, "MAX_ACTIVE_JOBS", 10)
        big = spec("c")
        big.count = 3
        err = await code_of(h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=big), timeout=5))
        assert err == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(h.raft.proposals) == committed


async def test_task_events_about_other_nodes_tasks_are_not_proposed(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader(h)
        queues = {}

        async def open_agent(node_id):
            queue: asyncio.Queue = asyncio.Queue()
            queue.put_nowait(hello(node_id))
            queues[node_id] = queue

            async def requests():
                while True:
                    yield await queue.get()

            call = agent_pb2_grpc.AgentServiceStub(h.channel).Connect(requests(), timeout=20)
            assert (await call.read()).HasField("welcome")
            return call

        n1 = await open_agent("n1")
        job = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5)
        task_id = job.tasks[0].id
        for _ in range(3000):
            if h.state.task(task_id).node_id == "n1":
                break
            await asyncio.sleep(0.01)
        task = h.state.task(task_id)
        assert task.node_id == "n1"
        n2 = await open_agent("n2")
        committed = len(h.raft.proposals)
        for tid in (task_id, "nope.0", ""):
            ev = agent_pb2.TaskEvent(task_id=tid, attempt=task.attempt, type=agent_pb2.TASK_EVENT_STARTED)
            queues["n2"].put_nowait(agent_pb2.AgentMessage(task_event=ev))
        queues["n2"].put_nowait(agent_pb2.AgentMessage(report=agent_pb2.Report(time_ms=7)))
        live = h.server.replica.sessions.live
        for _ in range(3000):  # the report is read after the events: then they were handled
            if "n2" in live and any(entry[0] == 7 for entry in live["n2"].history):
                break
            await asyncio.sleep(0.01)
        assert any(entry[0] == 7 for entry in live["n2"].history)
        await asyncio.sleep(0.05)  # let any (wrong) proposal task run
        kinds = [commands.kind(commands.decode(p)) for p in h.raft.proposals[committed:]]
        assert not {"task_update", "task_updates"} & set(kinds), kinds
        assert h.state.task(task_id).state == task.state
        # The node that holds the task may still report it.
        ev = agent_pb2.TaskEvent(task_id=task_id, attempt=task.attempt, type=agent_pb2.TASK_EVENT_STARTED)
        queues["n1"].put_nowait(agent_pb2.AgentMessage(task_event=ev))
        for _ in range(3000):
            if h.state.task(task_id).state == types_pb2.TASK_STATE_RUNNING:
                break
            await asyncio.sleep(0.01)
        assert h.state.task(task_id).state == types_pb2.TASK_STATE_RUNNING
        n1.cancel()
        n2.cancel()


async def test_health_needs_no_token_and_reflection_needs_a_reader(tmp_path, pki):
    health = pytest.importorskip("grpc_health.v1.health_pb2")
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    refl = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    refl_grpc = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2_grpc")
    async with inproc_controller(tmp_path, tokens_file=pki.tokens_file) as h:
        await wait_leader(h)
        try:
            await health_grpc.HealthStub(h.channel).Check(health.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            # Whatever health answers, it is not an authentication failure.
            assert e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        async def list_services(token):
            stub = refl_grpc.ServerReflectionStub(h.channel)
            req = refl.ServerReflectionRequest(list_services="")
            out = []
            async for resp in stub.ServerReflectionInfo(iter([req]), metadata=md(token), timeout=5):
                out += [s.name for s in resp.list_services_response.service]
            return out

        assert "lepton.v1.ControlService" in await list_services(pki.tokens["bob"])
        assert await code_of(list_services(None)) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(list_services(pki.tokens["agent-n1"])) == grpc.StatusCode.PERMISSION_DENIED
