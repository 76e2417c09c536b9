"""The event log covers what operators watch for, and the leader logs each event as one line.

One scenario on the Raft stand-in with two scripted agents: leadership is
announced, nodes join, a batch task is placed, starts and exits, a
higher-priority job preempts a lower one, a node goes silent and becomes
suspect then down, and its task is lost. `WatchEvents` (what `lepton-ctl
events` streams) must show each of those event types with the ids set, and
the `lepton.events` log must carry the same events with their ids as fields.
"""

from __future__ import annotations

import asyncio
import logging

from lepton.v1 import agent_pb2, control_pb2, types_pb2
from tests.support.fake_agent import FakeAgent
from tests.support.inproc import inproc_controller

GiB = 2**30


def job(
    name: str, count: int, cpu: int, priority: int, type_=types_pb2.JOB_TYPE_SERVICE
) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=name,
        count=count,
        priority=priority,
        type=type_,
        template=types_pb2.TaskTemplate(
            command="sleep", args=["60"], resources=types_pb2.Resources(cpu_millis=cpu, memory_bytes=GiB)
        ),
    )


async def until(h, types: set[str], within: float = 20.0) -> list[types_pb2.Event]:
    """Replays the event log until every type in `types` has appeared."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        events = [e async for e in h.control.WatchEvents(control_pb2.WatchEventsRequest(), timeout=10)]
        if types <= {e.type for e in events}:
            return events
        if loop.time() > end:
            raise AssertionError(f"missing event types {types - {e.type for e in events}}")
        await asyncio.sleep(0.05)


async def test_events_cover_nodes_tasks_preemption_loss_and_leadership(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lepton.events")
    async with inproc_controller(
        tmp_path, suspect_after=0.3, down_after=0.6, failover_grace=0.1, placement_interval=0.1
    ) as h:
        await until(h, {"leader.changed", "member.joined"})
        n1 = FakeAgent(h.agent, "n1", cpu=2000)
        n2 = FakeAgent(h.agent, "n2", cpu=2000)
        try:
            for a in (n1, n2):
                await a.next("welcome")
                a.start_reporting(0.05)
            batch = await h.control.SubmitJob(
                control_pb2.SubmitJobRequest(spec=job("once", 1, 500, 1, types_pb2.JOB_TYPE_BATCH)), timeout=5
            )
            (t,) = batch.tasks
            await until(h, {"task.placed"})
            agent = n1 if h.state.task(t.id).node_id == "n1" else n2
            agent.event(t.id, 1, agent_pb2.TASK_EVENT_STARTED)
            agent.event(t.id, 1, agent_pb2.TASK_EVENT_EXITED, exit_code=0)
            await until(h, {"task.started", "task.exited"})

            # Two low-priority services fill both nodes; a high-priority one must preempt.
            low = await h.control.SubmitJob(
                control_pb2.SubmitJobRequest(spec=job("low", 2, 1500, 1)), timeout=5
            )
            for _ in range(400):
                if all(h.state.task(x.id).node_id for x in low.tasks):
                    break
                await asyncio.sleep(0.05)
            assert {h.state.task(x.id).node_id for x in low.tasks} == {"n1", "n2"}
            await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=job("high", 1, 1500, 10)), timeout=5)
            await until(h, {"task.preempted"})

            # n2 goes silent: suspect, then down, and what ran there is lost.
            n2.stop_reporting()
            await n2.close()
            events = await until(h, {"node.suspect", "node.down", "task.lost"})
        finally:
            await n1.close()
            await n2.close()

    by_type: dict[str, list[types_pb2.Event]] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e)
    assert {e.node_id for e in by_type["node.joined"]} == {"n1", "n2"}
    assert by_type["node.down"][0].node_id == "n2"
    for kind in ("task.placed", "task.started", "task.exited", "task.preempted", "task.lost"):
        e = by_type[kind][0]
        assert e.task_id and e.job_id and e.node_id, (kind, e)
    assert all(e.term >= 1 for e in events)

    # The leader logged the same events, one record each, ids as fields.
    logged = [r for r in caplog.records if r.name == "lepton.events"]
    preempted = [r for r in logged if getattr(r, "event", "") == "task.preempted"]
    assert preempted and preempted[0].task_id == by_type["task.preempted"][0].task_id
    assert {getattr(r, "event", "") for r in logged} >= {
        "node.joined",
        "task.placed",
        "node.down",
        "task.lost",
    }
