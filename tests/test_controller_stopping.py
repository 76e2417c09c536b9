"""A cancelled task the agent never ran must not stay STOPPING for ever (found by the fault suite).

A task is placed (ASSIGNED) and its job cancelled before the agent acted on
the desired set that held it: the agent skipped that version, or was
disconnected meanwhile. The task goes STOPPING and waits for the agent's
STOPPED report, which never comes, because the agent has nothing to stop.
It then holds its reservation on the node for ever. The agent's Hello and
its reports list every task it has; a STOPPING task of this node that the
agent does not list is stopped.
"""

from __future__ import annotations

from lepton.v1 import control_pb2, types_pb2
from tests.support.fake_agent import FakeAgent
from tests.support.inproc import inproc_controller
from tests.test_controller_agents import eventually
from tests.test_controller_api import spec, wait_leader_announced

TS = types_pb2.TaskState


async def test_cancelled_task_the_agent_never_started_becomes_stopped(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1")
        try:
            await a.next("desired")
            a.start_reporting()  # reports list no task: this agent starts nothing
            d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(count=1)), timeout=5)
            await a.desired_until(lambda ds: len(ds.tasks) == 1)
            await h.control.CancelJob(control_pb2.CancelJobRequest(id=d.job.id), timeout=5)
            await eventually(
                lambda: all(t.state == TS.TASK_STATE_STOPPED for t in h.state.tasks(job_id=d.job.id)),
                what="the task to leave STOPPING",
            )
        finally:
            await a.close()


async def test_reconnecting_agent_that_does_not_run_a_stopping_task_releases_it(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        a = FakeAgent(h.agent, "n1")
        await a.next("desired")
        d = await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(count=1)), timeout=5)
        await a.desired_until(lambda ds: len(ds.tasks) == 1)
        await a.close()  # cut off before it started the task
        await h.control.CancelJob(control_pb2.CancelJobRequest(id=d.job.id), timeout=5)
        assert [t.state for t in h.state.tasks(job_id=d.job.id)] == [TS.TASK_STATE_STOPPING]
        b = FakeAgent(h.agent, "n1")  # Hello lists no task
        try:
            await b.next("desired")
            await eventually(
                lambda: all(t.state == TS.TASK_STATE_STOPPED for t in h.state.tasks(job_id=d.job.id)),
                what="the task to leave STOPPING",
            )
        finally:
            await b.close()
