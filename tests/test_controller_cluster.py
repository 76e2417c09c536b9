"""Three real lepton-controller processes on loopback with the real Raft.

One scenario, in order (starting clusters is the expensive part on a shared
2-core machine): a submit sent to a follower succeeds through the NotLeader
redirect; SIGKILL of the leader keeps the job and a new leader takes writes;
a SIGTERM of every replica is graceful (exit 0) and after restarting all
three the state is intact. Fencing with the real Raft runs in-process: a
plan stamped with the previous term is rejected after a restart.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.config import ControllerConfig
from controller.server import ControllerServer
from lepton.errors import FailedPrecondition
from lepton.v1 import commands_pb2, control_pb2, types_pb2
from tests.support.client import RedirectingClient
from tests.support.procs import ControllerCluster, free_port

GiB = 2**30


def job(name: str) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=name,
        count=1,
        template=types_pb2.TaskTemplate(
            command="sleep", args=["60"], resources=types_pb2.Resources(cpu_millis=100, memory_bytes=GiB)
        ),
    )


async def leader_of(client: RedirectingClient, addresses: list[str], exclude: str = "") -> tuple[str, str]:
    """(leader id, leader API address) once every live replica agrees and the address is registered."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while loop.time() < end:
        seen = set()
        for a in addresses:
            try:
                st = await client.stub(a).GetClusterStatus(
                    control_pb2.ClusterStatusRequest(stale=True), timeout=2
                )
            except Exception:
                seen.add(None)
                continue
            seen.add((st.leader_id, st.leader_api_address))
        if len(seen) == 1:
            (only,) = seen
            if only and only[0] and only[0] != exclude and only[1]:
                return only
        await asyncio.sleep(0.1)
    raise AssertionError(f"no agreed leader among {addresses}: {seen}")


@pytest.fixture
def cluster(tmp_path):
    c = ControllerCluster(tmp_path, 3)
    c.start()
    try:
        yield c
    finally:
        c.close()


async def test_redirect_failover_and_restart(cluster):
    client = RedirectingClient(cluster.api_addresses)
    try:
        try:
            leader_id, leader_api = await leader_of(client, cluster.api_addresses)
            follower = next(p for p in cluster.procs.values() if p.id != leader_id)

            # 1. A submit sent to a follower succeeds through the redirect.
            d = await client.call(
                "SubmitJob", control_pb2.SubmitJobRequest(spec=job("first")), address=follower.api
            )
            assert d.job.id and client.redirects >= 1
            # A linearizable read at a follower is redirected to the leader too...
            got = await client.call("GetJob", control_pb2.GetJobRequest(id="first"), address=follower.api)
            assert got.job.id == d.job.id
            # ...while a stale read is answered by the follower itself once it has applied the entry.
            for _ in range(100):
                st = await client.stub(follower.api).ListJobs(
                    control_pb2.ListJobsRequest(stale=True), timeout=5
                )
                if st.jobs:
                    break
                await asyncio.sleep(0.05)
            assert [j.id for j in st.jobs] == [d.job.id]

            # 2. SIGKILL the leader: the job survives and the new leader takes writes.
            cluster.procs[leader_id].kill()
            alive = [p.api for p in cluster.procs.values() if p.running]
            new_id, _ = await leader_of(client, alive, exclude=leader_id)
            assert new_id != leader_id
            client.addresses = alive
            got = await client.call("GetJob", control_pb2.GetJobRequest(id="first"), address=alive[0])
            assert got.job.id == d.job.id
            d2 = await client.call(
                "SubmitJob", control_pb2.SubmitJobRequest(spec=job("second")), address=alive[0]
            )
            assert d2.job.id

            # 3. Stop everything gracefully, restart all three: the state is intact.
            for p in cluster.procs.values():
                if p.running:
                    assert p.terminate() == 0, p.log_tail()
            for p in cluster.procs.values():
                p.start()
            client.addresses = cluster.api_addresses
            await leader_of(client, cluster.api_addresses)
            jobs = await client.call(
                "ListJobs", control_pb2.ListJobsRequest(), address=cluster.api_addresses[0]
            )
            assert sorted(j.spec.name for j in jobs.jobs) == ["first", "second"]
            assert {j.id for j in jobs.jobs} == {d.job.id, d2.job.id}
        except BaseException:
            print(cluster.logs())
            raise
    finally:
        await client.close()


async def test_plan_from_an_old_term_is_rejected_with_real_raft(tmp_path):
    raft = f"127.0.0.1:{free_port()}"
    cfg = ControllerConfig(
        id="c1", listen="127.0.0.1:0", raft_listen=raft, peers={"c1": raft}, data_dir=tmp_path, grace=0.5
    )

    async def started() -> ControllerServer:
        s = ControllerServer(cfg)
        try:
            await s.start()
            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while not s.replica.is_leader:
                assert loop.time() < end, "single replica never became leader"
                await asyncio.sleep(0.02)
        except BaseException:
            await s.stop()
            raise
        return s

    s = await started()
    try:
        old_term = s.replica.node.term
        await s.replica.propose(commands_pb2.CommitPlan(), plan_term=old_term)  # current term: accepted
    finally:
        await s.stop()
    s = await started()
    try:
        assert s.replica.node.term > old_term
        with pytest.raises(FailedPrecondition, match="deposed leader"):
            await s.replica.propose(commands_pb2.CommitPlan(), plan_term=old_term)
        assert s.replica.state.events(types=["plan.rejected"])
    finally:
        await s.stop()
