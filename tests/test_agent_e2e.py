"""End to end: a real lepton-agent process against a real one-replica lepton-controller.

The agent registers with its overridden capacity and labels, runs a batch
task whose exit code reaches the controller, runs a service task, and after
a kill -9 and restart of the agent the service is neither lost nor
duplicated. Uses the controller tests' process helpers (tests.support.procs)
for the controller; the agent is started and cleaned up by this file's own
fixture.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lepton.v1 import control_pb2, types_pb2
from tests.test_agent_session import Agents, task_pids

procs = pytest.importorskip("tests.support.procs")
client_mod = pytest.importorskip("tests.support.client")

TS = types_pb2.TaskState


async def until(fn, what: str, within: float = 60.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        got = await fn()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def cluster(tmp_path):
    (tmp_path / "ctl").mkdir()
    ctl = procs.ControllerCluster(tmp_path / "ctl", 1)
    agents = Agents(tmp_path)
    ctl.start()
    try:
        yield ctl, agents
    finally:
        await agents.cleanup()
        ctl.close()


async def test_agent_with_real_controller(cluster, tmp_path):
    ctl, agents = cluster
    data = tmp_path / "agent-e2e1"
    controllers = ",".join(ctl.api_addresses)
    extra = ("--cpus", "100", "--memory", "1Ti", "--network", "10G", "--label", "zone=a")
    p = await agents.start(controllers, *extra, node_id="e2e1")
    client = client_mod.RedirectingClient(ctl.api_addresses)
    try:

        async def node():
            r = await client.call("ListNodes", control_pb2.ListNodesRequest())
            ready = [n for n in r.nodes if n.id == "e2e1" and n.status == types_pb2.NODE_STATUS_READY]
            return ready[0] if ready else None

        n = await until(node, "node e2e1 ready")
        assert n.capacity.cpu_millis == 100_000 and n.capacity.memory_bytes == 2**40
        assert n.capacity.network_mbps == 10_000
        assert dict(n.labels)["zone"] == "a"

        batch = types_pb2.JobSpec(
            name="fails",
            type=types_pb2.JOB_TYPE_BATCH,
            count=1,
            template=types_pb2.TaskTemplate(
                command="sh",
                args=["-c", "exit 3"],
                resources=types_pb2.Resources(cpu_millis=100),
                restart=types_pb2.RestartPolicy(mode=types_pb2.RESTART_MODE_NEVER),
            ),
        )
        job = (await client.call("SubmitJob", control_pb2.SubmitJobRequest(spec=batch))).job

        async def failed():
            ts = (await client.call("ListTasks", control_pb2.ListTasksRequest(job_id=job.id))).tasks
            return ts[0] if ts and ts[0].state == TS.TASK_STATE_FAILED else None

        t = await until(failed, "batch task failed")
        assert t.exit_code == 3

        svc = types_pb2.JobSpec(
            name="svc",
            count=1,
            template=types_pb2.TaskTemplate(
                command="sleep", args=["300"], resources=types_pb2.Resources(cpu_millis=100)
            ),
        )
        sjob = (await client.call("SubmitJob", control_pb2.SubmitJobRequest(spec=svc))).job

        async def running():
            ts = (await client.call("ListTasks", control_pb2.ListTasksRequest(job_id=sjob.id))).tasks
            return ts[0] if ts and ts[0].state == TS.TASK_STATE_RUNNING else None

        t = await until(running, "service task running")
        await until(lambda: _async(len(task_pids(data, t.id)) == 1), "service process")
        (pid,) = task_pids(data, t.id)

        p.kill()  # kill -9 the agent; the task keeps running
        await p.wait()
        await agents.start(controllers, *extra, node_id="e2e1")
        await until(node, "node e2e1 ready again")
        # Give the controller and agent a few report rounds to reconcile, then check
        # the process table: still exactly the original process.
        for _ in range(10):
            await asyncio.sleep(0.3)
            assert task_pids(data, t.id) == [pid]
        t2 = await until(running, "service task still running")
        assert t2.attempt == t.attempt and t2.node_id == "e2e1"
    finally:
        await client.close()


async def _async(value):
    return value


@pytest.fixture
async def three(tmp_path):
    (tmp_path / "ctl3").mkdir()
    ctl = procs.ControllerCluster(tmp_path / "ctl3", 3)
    agents = Agents(tmp_path)
    ctl.start()
    try:
        yield ctl, agents
    finally:
        await agents.cleanup()
        ctl.close()


async def test_agent_follows_a_leader_change(three, tmp_path):
    """Kill -9 the leader: the agent ends up on the new leader's stream, its task neither lost nor doubled."""
    ctl, agents = three
    data = tmp_path / "agent-fo1"
    await agents.start(",".join(ctl.api_addresses), "--cpus", "8", node_id="fo1")
    client = client_mod.RedirectingClient(ctl.api_addresses)
    try:

        async def status():
            return await client.call("GetClusterStatus", control_pb2.ClusterStatusRequest())

        async def node_ready():
            r = await client.call("ListNodes", control_pb2.ListNodesRequest())
            return any(
                n.id == "fo1" and n.status == types_pb2.NODE_STATUS_READY and n.connected for n in r.nodes
            )

        await until(node_ready, "node fo1 ready")
        svc = types_pb2.JobSpec(
            name="svc",
            count=1,
            template=types_pb2.TaskTemplate(
                command="sleep", args=["300"], resources=types_pb2.Resources(cpu_millis=100)
            ),
        )
        job = (await client.call("SubmitJob", control_pb2.SubmitJobRequest(spec=svc))).job

        async def running():
            ts = (await client.call("ListTasks", control_pb2.ListTasksRequest(job_id=job.id))).tasks
            return ts[0] if ts and ts[0].state == TS.TASK_STATE_RUNNING else None

        t = await until(running, "task running")
        await until(lambda: _async(len(task_pids(data, t.id)) == 1), "task process")
        (pid,) = task_pids(data, t.id)

        old = await status()
        ctl.procs[old.leader_id].kill()

        async def new_leader():
            s = await status()
            return s if s.leader_id and s.leader_id != old.leader_id else None

        await until(new_leader, "a new leader")
        # No operator action: the agent reconnects and the new leader sees it connected.
        await until(node_ready, "node fo1 connected to the new leader")
        t2 = await until(running, "task still running")
        assert t2.attempt == t.attempt and t2.node_id == "fo1"
        assert task_pids(data, t.id) == [pid]
    finally:
        await client.close()
