"""ControlService on the Raft stand-in: happy paths, bad input, redirects, fencing.

Bad input must give the right status code and a readable message, and must
never reach the Raft log (the stand-in records every committed proposal).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controller.state import commands
from lepton.errors import FailedPrecondition, not_leader_from_metadata
from lepton.v1 import commands_pb2, control_pb2, types_pb2
from tests.support.inproc import inproc_controller

GiB = 2**30


def spec(name="web", count=2, cpu=500, mem=GiB, **kw) -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(
        name=name,
        priority=kw.pop("priority", 1),
        count=count,
        template=types_pb2.TaskTemplate(
            command="sleep", args=["60"], resources=types_pb2.Resources(cpu_millis=cpu, memory_bytes=mem)
        ),
    )
    return s


async def wait_leader_announced(h):
    for _ in range(200):
        if h.state.leader().leader_id == "c1" and any(m.id == "c1" for m in h.state.members()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("leader never announced itself")


async def expect_code(call, code, fragment=""):
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call
    assert ei.value.code() == code, ei.value.details()
    if fragment:
        assert fragment in ei.value.details()
    return ei.value


async def test_submit_get_list_cancel(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(), request_id="r1"), timeout=5)
        assert d.job.id and d.job.spec.name == "web" and len(d.tasks) == 2
        assert d.job.request_id == "r1"
        # Retry with the same request id: the same job, no second one.
        again = await h.control.SubmitJob(
            control_pb2.SubmitJobRequest(spec=spec(), request_id="r1"), timeout=5
        )
        assert again.job.id == d.job.id
        by_name = await h.control.GetJob(control_pb2.GetJobRequest(id="web"), timeout=5)
        assert by_name.job.id == d.job.id
        jobs = await h.control.ListJobs(control_pb2.ListJobsRequest(), timeout=5)
        assert [j.id for j in jobs.jobs] == [d.job.id]
        tasks = await h.control.ListTasks(control_pb2.ListTasksRequest(job_id="web"), timeout=5)
        assert len(tasks.tasks) == 2
        c = await h.control.CancelJob(control_pb2.CancelJobRequest(id=d.job.id), timeout=5)
        assert c.job.state == types_pb2.JOB_STATE_CANCELLED
        st = await h.control.GetClusterStatus(control_pb2.ClusterStatusRequest(), timeout=5)
        assert st.leader_id == "c1" and st.answered_by == "c1" and st.leader_api_address == h.server.address
        assert st.jobs_total == 0


def _bad_specs():
    def mk(**kw):
        s = spec()
        for path, v in kw.items():
            obj = s
            parts = path.split(".")
            for p in parts[:-1]:
                obj = getattr(obj, p)
            if isinstance(v, list):
                getattr(obj, parts[-1]).extend(v)
            else:
                setattr(obj, parts[-1], v)
        return s

    return [
        (mk(count=0), "count must be between"),
        (mk(count=-3), "count must be between"),
        (mk(count=10**6), "count must be between"),
        (mk(name=""), "job name is empty"),
        (mk(name="Bad Name!"), "job name"),
        (mk(name="x" * 300), "longer than 63"),
        (mk(**{"template.command": ""}), "command is empty"),
        (mk(**{"template.command": "   "}), "command is empty"),
        (mk(**{"template.resources.cpu_millis": -1}), "cpu is negative"),
        (
            mk(**{"template.resources.cpu_millis": 0, "template.resources.memory_bytes": 0}),
            "request at least one",
        ),
        (mk(**{"template.resources.cpu_millis": 10**12}), "above the limit"),
        (mk(**{"template.resources.memory_bytes": 2**62}), "above the limit"),
        (mk(**{"template.resources.gpus": -2}), "gpus is negative"),
        (mk(priority=-1), "priority must be between"),
        (
            mk(**{"template.constraints": [types_pb2.Constraint(key="zone", op="~", values=["a"])]}),
            "unknown op",
        ),
        (mk(**{"template.args": ["x" * 70_000]}), "task args"),
    ]


@pytest.mark.parametrize("bad, fragment", _bad_specs())
async def test_bad_job_specs_are_invalid_argument_and_not_committed(tmp_path, bad, fragment):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        before = len(h.raft.proposals)
        await expect_code(
            h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=bad), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            fragment,
        )
        assert len(h.raft.proposals) == before


async def test_other_bad_requests(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        before = len(h.raft.proposals)
        IA, NF = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        await expect_code(h.control.SubmitJob(control_pb2.SubmitJobRequest(), timeout=5), IA, "no job spec")
        await expect_code(
            h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(), request_id="r" * 1000), timeout=5),
            IA,
            "request_id",
        )
        await expect_code(h.control.GetJob(control_pb2.GetJobRequest(id=""), timeout=5), IA, "empty")
        await expect_code(h.control.GetJob(control_pb2.GetJobRequest(id="x" * 5000), timeout=5), IA, "longer")
        await expect_code(h.control.GetJob(control_pb2.GetJobRequest(id="nope"), timeout=5), NF, "nope")
        await expect_code(h.control.CancelJob(control_pb2.CancelJobRequest(id="nope"), timeout=5), NF, "nope")
        await expect_code(h.control.GetNode(control_pb2.GetNodeRequest(id="n9"), timeout=5), NF, "n9")
        await expect_code(h.control.CordonNode(control_pb2.NodeRequest(id="n9"), timeout=5), NF, "n9")
        await expect_code(h.control.UncordonNode(control_pb2.NodeRequest(id="n9"), timeout=5), NF, "n9")
        await expect_code(h.control.DrainNode(control_pb2.DrainNodeRequest(id="n9"), timeout=5), NF, "n9")
        await expect_code(
            h.control.DrainNode(control_pb2.DrainNodeRequest(id="n9", deadline_ms=-1), timeout=5), IA
        )
        await expect_code(h.control.ListTasks(control_pb2.ListTasksRequest(job_id="nope"), timeout=5), NF)
        await expect_code(
            h.control.ListTasks(control_pb2.ListTasksRequest(state=99), timeout=5), IA, "unknown task state"
        )
        await expect_code(h.control.PlanRebalance(control_pb2.RebalanceRequest(max_moves=-1), timeout=5), IA)
        await expect_code(
            h.control.RegisterMember(
                control_pb2.RegisterMemberRequest(id="zz", api_address="1.2.3.4:5"), timeout=5
            ),
            IA,
            "not a member",
        )
        assert len(h.raft.proposals) == before


async def test_duplicate_job_name_already_exists(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5)
        before = len(h.raft.proposals)
        await expect_code(
            h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5),
            grpc.StatusCode.ALREADY_EXISTS,
            "web",
        )
        assert len(h.raft.proposals) == before


async def test_oversized_message_rejected(tmp_path):
    async with inproc_controller(tmp_path, max_message_bytes=64 * 1024) as h:
        await wait_leader_announced(h)
        s = spec()
        s.template.env["BIG"] = "x" * 100_000
        # gRPC refuses a message above the limit before our code sees it.
        await expect_code(
            h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=s), timeout=5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        # The server is fine afterwards.
        await h.control.GetClusterStatus(control_pb2.ClusterStatusRequest(), timeout=5)


async def test_follower_redirects_with_leader_address(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        await h.control.RegisterMember(
            control_pb2.RegisterMemberRequest(
                id="c2", api_address="127.0.0.1:7777", raft_address="127.0.0.1:2"
            ),
            timeout=5,
        )
        d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5)
        h.raft.set_leader(False, "c2")
        before = len(h.raft.proposals)
        err = await expect_code(
            h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(name="other")), timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        nl = not_leader_from_metadata(err.trailing_metadata())
        assert nl is not None and nl.leader_id == "c2" and nl.leader_api_address == "127.0.0.1:7777"
        await expect_code(
            h.control.CancelJob(control_pb2.CancelJobRequest(id="web"), timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        # A stale read is served locally; a linearizable one needs the leader (the stand-in cannot forward).
        got = await h.control.GetJob(control_pb2.GetJobRequest(id="web", stale=True), timeout=5)
        assert got.job.id == d.job.id
        assert len(h.raft.proposals) == before


async def test_commit_plan_with_old_term_is_rejected(tmp_path):
    async with inproc_controller(tmp_path, placement_interval=1000.0) as h:
        await wait_leader_announced(h)
        old_term = h.raft.term
        h.raft.set_leader(True)  # a new term
        with pytest.raises(FailedPrecondition, match="deposed leader"):
            await h.server.replica.propose(commands_pb2.CommitPlan(), plan_term=old_term)
        await h.server.replica.propose(commands_pb2.CommitPlan(), plan_term=h.raft.term)
        evs = h.state.events(types=["plan.rejected"])
        assert len(evs) == 1


async def test_empty_and_garbage_commands_are_rejected_by_apply(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        digest = h.state.digest()
        for data in (b"", b"\xff\x00garbage", commands.encode(commands_pb2.Command(version=1))):
            result = await h.raft.propose(data)
            assert isinstance(result, Exception)
        # Rejected entries advance the applied index but change nothing else.
        assert h.state.digest() != "" and h.state.jobs() == []
        assert digest is not None


async def test_watch_events_backlog_and_follow(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        backlog = [e async for e in h.control.WatchEvents(control_pb2.WatchEventsRequest(), timeout=5)]
        assert any(e.type.startswith("leader") for e in backlog)
        call = h.control.WatchEvents(
            control_pb2.WatchEventsRequest(since_seq=backlog[-1].seq, follow=True, types=["job."]), timeout=10
        )
        await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5)
        first = await call.read()
        assert first.type.startswith("job.")
        call.cancel()


async def test_unparsable_request_bytes_are_invalid_argument(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        before = len(h.raft.proposals)
        raw = h.channel.unary_unary(
            "/lepton.v1.ControlService/SubmitJob", request_serializer=None, response_deserializer=None
        )
        await expect_code(
            raw(b"\xff\xff\xff\xff garbage", timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "malformed"
        )
        assert len(h.raft.proposals) == before
        # An unknown method is UNIMPLEMENTED, and the server keeps serving.
        nope = h.channel.unary_unary(
            "/lepton.v1.ControlService/Nope", request_serializer=None, response_deserializer=None
        )
        await expect_code(nope(b"", timeout=5), grpc.StatusCode.UNIMPLEMENTED)
        await h.control.GetClusterStatus(control_pb2.ClusterStatusRequest(), timeout=5)


async def test_random_request_bytes_never_crash_or_give_internal_errors(tmp_path):
    """Seeded fuzz: random bytes (often valid protobuf with nonsense fields) at every RPC."""
    import random

    from lepton.v1 import control_pb2 as c

    rng = random.Random(1234)
    service = c.DESCRIPTOR.services_by_name["ControlService"]
    acceptable = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # a follow-mode watch that never ends
    }
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        for m in service.methods:
            path = f"/{service.full_name}/{m.name}"
            if m.server_streaming:
                call = h.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            else:
                call = h.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            for _ in range(40):
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
                try:
                    if m.server_streaming:
                        async for _ in call(data, timeout=0.5):
                            pass
                    else:
                        await call(data, timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    details = e.details()
                assert code in acceptable, (m.name, data, code, details)
        await h.control.GetClusterStatus(control_pb2.ClusterStatusRequest(), timeout=5)


async def test_agent_stream_with_garbage_first_message_is_invalid_argument(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        connect = h.channel.stream_stream(
            "/lepton.v1.AgentService/Connect", request_serializer=None, response_deserializer=None
        )

        async def garbage():
            yield b"\xff\xff\xff\xff\x0f"

        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in connect(garbage(), timeout=5):
                pass
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in ei.value.details()
