"""Agent streams and leader loops on the Raft stand-in: register, desired sets, events,
placement, node loss and return, drain, and streams ending on leadership loss."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lepton.errors import not_leader_from_metadata
from lepton.v1 import agent_pb2, control_pb2, types_pb2
from tests.support.fake_agent import FakeAgent
from tests.support.inproc import inproc_controller
from tests.test_controller_api import spec, wait_leader_announced

TS = types_pb2.TaskState


async def eventually(cond, timeout=10.0, what="condition"):  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_hello_welcome_desired_and_events(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1")
        try:
            w = await a.next()
            assert (
                w.WhichOneof("msg") == "welcome"
                and w.welcome.node_id == "n1"
                and w.welcome.controller_id == "c1"
            )
            first = await a.next("desired")
            assert list(first.desired.tasks) == []
            a.start_reporting()
            assert h.state.node("n1").status == types_pb2.NODE_STATUS_READY
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(count=2)), timeout=5)
            desired = await a.desired_until(lambda ds: len(ds.tasks) == 2)
            assert {t.task_id for t in desired.tasks} == {t.id for t in d.tasks}
            assert desired.version > 0
            for t in desired.tasks:
                a.event(t.task_id, t.attempt, agent_pb2.TASK_EVENT_STARTED)
            await eventually(
                lambda: all(t.state == TS.TASK_STATE_RUNNING for t in h.state.tasks(job_id=d.job.id)),
                what="running",
            )
            node = await h.control.GetNode(control_pb2.GetNodeRequest(id="n1"), timeout=5)
            assert node.node.connected and node.node.last_report_ms > 0 and len(node.tasks) == 2
            # Cancelling the job empties the node's desired set.
            await h.control.CancelJob(control_pb2.CancelJobRequest(id="web"), timeout=5)
            await a.desired_until(lambda ds: len(ds.tasks) == 0)
        finally:
            await a.close()


async def test_first_message_must_be_hello_and_valid(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        before = len(h.raft.proposals)

        async def only(msg):
            yield msg

        call = h.agent.Connect(only(agent_pb2.AgentMessage(report=agent_pb2.Report())), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in call:
                pass
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Hello" in ei.value.details()

        bad = agent_pb2.AgentMessage(hello=agent_pb2.Hello(node_id="bad id with spaces"))
        call = h.agent.Connect(only(bad), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in call:
                pass
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "node id" in ei.value.details()
        assert len(h.raft.proposals) == before


async def test_node_down_tasks_move_and_stale_copies_are_dropped(tmp_path):
    async with inproc_controller(tmp_path, suspect_after=0.3, down_after=0.6, failover_grace=0.6) as h:
        await wait_leader_announced(h)
        agents = {"n1": FakeAgent(h.agent, "n1"), "n2": FakeAgent(h.agent, "n2")}
        try:
            for a in agents.values():
                a.start_reporting()
                await a.next("desired")
            d = await h.control.SubmitJob(
                control_pb2.SubmitJobRequest(spec=spec(count=1, cpu=400)), timeout=5
            )
            await eventually(lambda: _placed_on(h, d) is not None, what="task placed")
            first = _placed_on(h, d)
            other = "n2" if first == "n1" else "n1"
            await agents[first].desired_until(lambda ds: len(ds.tasks) == 1)
            agents[first].stop_reporting()
            await eventually(
                lambda: h.state.node(first).status == types_pb2.NODE_STATUS_DOWN, what="node down"
            )
            await eventually(lambda: _placed_on(h, d) == other, what="task rescheduled")
            await agents[other].desired_until(lambda ds: len(ds.tasks) == 1)
            # The lost node comes back (reports again): its desired set no longer has the task.
            agents[first].start_reporting()
            await eventually(
                lambda: h.state.node(first).status == types_pb2.NODE_STATUS_READY, what="node ready"
            )
            await agents[first].desired_until(lambda ds: len(ds.tasks) == 0)
        finally:
            for a in agents.values():
                await a.close()


def _placed_on(h, d):
    ts = h.state.tasks(job_id=d.job.id)
    if ts and ts[0].state == TS.TASK_STATE_ASSIGNED:
        return ts[0].node_id
    return None


async def test_stream_ends_with_not_leader_on_leadership_loss(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1")
        try:
            await a.next("desired")
            h.raft.set_leader(False, "c2")
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                while True:
                    await a.next(timeout=5)
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert not_leader_from_metadata(ei.value.trailing_metadata()) is not None
        finally:
            await a.close()
        # A new stream to a follower is refused the same way.
        b = FakeAgent(h.agent, "n2")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await b.next(timeout=5)
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            await b.close()


async def test_drain_moves_running_services_make_before_break(tmp_path):
    async with inproc_controller(tmp_path, drain_max_parallel=1) as h:
        await wait_leader_announced(h)
        agents = {n: FakeAgent(h.agent, n) for n in ("n1", "n2")}
        try:
            for a in agents.values():
                a.start_reporting()
                await a.next("desired")
            d = await h.control.SubmitJob(
                control_pb2.SubmitJobRequest(spec=spec(count=2, cpu=1000)), timeout=5
            )
            await eventually(
                lambda: all(t.state == TS.TASK_STATE_ASSIGNED for t in h.state.tasks(job_id=d.job.id))
            )
            for t in h.state.tasks(job_id=d.job.id):
                agents[t.node_id].event(t.id, t.attempt, agent_pb2.TASK_EVENT_STARTED)
            await eventually(
                lambda: all(t.state == TS.TASK_STATE_RUNNING for t in h.state.tasks(job_id=d.job.id))
            )
            busy = h.state.tasks(job_id=d.job.id)[0].node_id
            other = "n2" if busy == "n1" else "n1"

            # The fake agent on the target node starts whatever it is told to run.
            async def run_desired(agent):
                started = set()
                while True:
                    msg = await agent.next("desired", timeout=30)
                    for t in msg.desired.tasks:
                        if (t.task_id, t.attempt) not in started:
                            started.add((t.task_id, t.attempt))
                            agent.event(t.task_id, t.attempt, agent_pb2.TASK_EVENT_STARTED)

            runner = asyncio.create_task(run_desired(agents[other]))
            try:
                await h.control.DrainNode(control_pb2.DrainNodeRequest(id=busy), timeout=5)
                max_moving = 0

                def drained():
                    nonlocal max_moving
                    ts = h.state.tasks(job_id=d.job.id)
                    max_moving = max(max_moving, sum(1 for t in ts if t.migrating_to))
                    return all(t.node_id == other and t.state == TS.TASK_STATE_RUNNING for t in ts)

                await eventually(drained, timeout=20, what="drained")
                assert max_moving <= 1
                await eventually(lambda: not h.state.node(busy).draining, what="drain complete")
                assert h.state.node(busy).cordoned
                assert h.state.events(types=["node.drained"])
            finally:
                runner.cancel()
        finally:
            for a in agents.values():
                await a.close()


async def test_rebalance_plan_and_apply_move_a_task_off_a_hot_node(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        agents = {n: FakeAgent(h.agent, n) for n in ("n1", "n2")}
        try:
            for a in agents.values():
                a.start_reporting(0.05)
                await a.next("desired")
            s = spec(count=1, cpu=1000)
            s.template.migratable = True
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=s), timeout=5)
            await eventually(lambda: h.state.tasks(job_id=d.job.id)[0].state == TS.TASK_STATE_ASSIGNED)
            t = h.state.tasks(job_id=d.job.id)[0]
            agents[t.node_id].event(t.id, t.attempt, agent_pb2.TASK_EVENT_STARTED)
            await eventually(lambda: h.state.tasks(job_id=d.job.id)[0].state == TS.TASK_STATE_RUNNING)
            hot, cool = t.node_id, ("n2" if t.node_id == "n1" else "n1")
            plan = await h.control.PlanRebalance(control_pb2.RebalanceRequest(), timeout=5)
            assert not plan.moves and plan.notes  # nothing is hot yet, and it says why
            agents[hot].cpu_millis = 7900  # 99% of the 8-core node, sustained
            for _ in range(100):
                plan = await h.control.PlanRebalance(control_pb2.RebalanceRequest(), timeout=5)
                if plan.moves:
                    break
                await asyncio.sleep(0.05)
            assert [(m.task_id, m.from_node, m.to_node) for m in plan.moves] == [(t.id, hot, cool)]
            assert plan.moves[0].reason and not plan.applied
            applied = await h.control.ApplyRebalance(control_pb2.RebalanceRequest(), timeout=5)
            assert applied.applied and [m.task_id for m in applied.moves] == [t.id]
            assert h.state.task(t.id).migrating_to == cool
        finally:
            for a in agents.values():
                await a.close()


async def test_pending_tasks_explain_why_they_are_not_placed(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1", net=1000)
        try:
            a.start_reporting()
            await a.next("desired")
            s = spec(count=1)
            s.template.resources.network_mbps = 5000  # more than the node's 1 Gbit/s
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=s), timeout=5)

            async def reason():
                got = await h.control.GetJob(control_pb2.GetJobRequest(id=d.job.id), timeout=5)
                return got.tasks[0].reason

            for _ in range(200):
                if "network" in await reason():
                    break
                await asyncio.sleep(0.02)
            assert "insufficient network" in await reason()
            assert h.state.tasks(job_id=d.job.id)[0].state == TS.TASK_STATE_PENDING
        finally:
            await a.close()


async def test_automatic_rebalance_moves_a_task_off_a_hot_node(tmp_path):
    async with inproc_controller(tmp_path, rebalance_auto=True, rebalance_interval=0.2) as h:
        await wait_leader_announced(h)
        agents = {n: FakeAgent(h.agent, n) for n in ("n1", "n2")}
        try:
            for a in agents.values():
                a.start_reporting(0.05)
                await a.next("desired")
            s = spec(count=1, cpu=1000)
            s.template.migratable = True
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=s), timeout=5)
            await eventually(lambda: h.state.tasks(job_id=d.job.id)[0].state == TS.TASK_STATE_ASSIGNED)
            t = h.state.tasks(job_id=d.job.id)[0]
            agents[t.node_id].event(t.id, t.attempt, agent_pb2.TASK_EVENT_STARTED)
            await eventually(lambda: h.state.tasks(job_id=d.job.id)[0].state == TS.TASK_STATE_RUNNING)
            cool = "n2" if t.node_id == "n1" else "n1"
            agents[t.node_id].cpu_millis = 7900
            await eventually(lambda: h.state.task(t.id).migrating_to == cool, what="automatic migration")
        finally:
            for a in agents.values():
                await a.close()


async def test_node_writes_and_cancel_are_idempotent_without_new_entries(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1")
        try:
            a.start_reporting()  # a silent node would turn suspect: a proposal of its own
            await a.next("desired")
            n = await h.control.CordonNode(control_pb2.NodeRequest(id="n1"), timeout=5)
            assert n.cordoned and n.state == "ready,cordoned"
            before = len(h.raft.proposals)
            again = await h.control.CordonNode(control_pb2.NodeRequest(id="n1"), timeout=5)
            assert again.cordoned and len(h.raft.proposals) == before
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.control.DrainNode(control_pb2.DrainNodeRequest(id="n1", cancel=True), timeout=5)
            assert (
                ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                and "not draining" in ei.value.details()
            )
            n = await h.control.UncordonNode(control_pb2.NodeRequest(id="n1"), timeout=5)
            assert not n.cordoned
            before = len(h.raft.proposals)
            await h.control.UncordonNode(control_pb2.NodeRequest(id="n1"), timeout=5)
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec()), timeout=5)
            await h.control.CancelJob(control_pb2.CancelJobRequest(id=d.job.id), timeout=5)
            after_cancel = len(h.raft.proposals)
            c = await h.control.CancelJob(control_pb2.CancelJobRequest(id=d.job.id), timeout=5)
            assert c.job.state == types_pb2.JOB_STATE_CANCELLED
            assert len(h.raft.proposals) == after_cancel
            assert after_cancel >= before + 2
        finally:
            await a.close()


async def test_leader_loops_follow_leadership(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        loops = h.server.leader_loops
        assert loops.active and loops.term == h.raft.term
        h.raft.set_leader(False, "c2")
        await asyncio.sleep(0)
        assert not loops.active
        h.raft.set_leader(True)
        new_term = h.raft.term
        await eventually(lambda: h.state.leader().term == new_term, what="LeaderChanged of the new term")
        assert loops.active and loops.term == new_term
        assert len(h.state.events(types=["leader"])) >= 2
