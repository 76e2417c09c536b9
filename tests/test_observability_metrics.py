"""Controller /metrics: valid Prometheus exposition, and the numbers move when work happens.

One replica on the real Raft module (single voter) with --metrics-listen on
a free port and a scripted agent: the exposition text is parsed with
prometheus_client's own parser (so a malformed line fails the test), then a
job is submitted and the placement, RPC, Raft and agent metrics are checked
to have moved. Waits poll the state with a deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.config import ControllerConfig
from controller.observability.metrics import ControllerMetrics
from controller.server import ControllerServer
from lepton.v1 import agent_pb2_grpc, control_pb2, control_pb2_grpc, types_pb2
from tests.support.fake_agent import FakeAgent
from tests.support.procs import free_port
from tests.support.prom import eventually, http_get, scrape, value

GiB = 2**30

EXPECTED = {
    # name (as the parser reports it, without _total) -> type
    "lepton_grpc_requests": "counter",
    "lepton_grpc_request_duration_seconds": "histogram",
    "lepton_raft_term": "gauge",
    "lepton_raft_commit_index": "gauge",
    "lepton_raft_applied_index": "gauge",
    "lepton_raft_is_leader": "gauge",
    "lepton_raft_has_leader": "gauge",
    "lepton_raft_leader_changes": "counter",
    "lepton_raft_proposal_duration_seconds": "histogram",
    "lepton_raft_wal_fsync_duration_seconds": "histogram",
    "lepton_placement_rounds": "counter",
    "lepton_placement_plan_duration_seconds": "histogram",
    "lepton_placement_tasks_placed": "counter",
    "lepton_placement_unplaced_tasks": "gauge",
    "lepton_agents_connected": "gauge",
    "lepton_agent_reports": "counter",
    "lepton_agent_report_lag_seconds": "histogram",
    "lepton_tasks": "gauge",
    "lepton_nodes": "gauge",
    "lepton_rebalance_moves": "counter",
    "lepton_auth_failures": "counter",
}


def spec(name: str, count: int, cpu_millis: int = 500) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=name,
        count=count,
        template=types_pb2.TaskTemplate(
            command="sleep",
            args=["60"],
            resources=types_pb2.Resources(cpu_millis=cpu_millis, memory_bytes=GiB),
        ),
    )


@pytest.fixture
async def replica(tmp_path):
    raft = f"127.0.0.1:{free_port()}"
    cfg = ControllerConfig(
        id="c1",
        listen="127.0.0.1:0",
        raft_listen=raft,
        peers={"c1": raft},
        data_dir=tmp_path,
        metrics_listen="127.0.0.1:0",
        placement_interval=0.2,
        grace=0.5,
    )
    server = ControllerServer(cfg)
    await server.start()
    try:

        async def leader():
            return server.replica.is_leader

        await eventually(leader, "the single replica to lead")
        yield server
    finally:
        await server.stop()


async def test_metrics_parse_and_move_with_work(replica):
    addr = replica.obs.http.address
    before = await scrape(addr)
    for name, kind in EXPECTED.items():
        assert name in before, f"{name} missing from /metrics"
        assert before[name].type == kind, (name, before[name].type)
    assert value(before, "lepton_raft_is_leader") == 1
    assert value(before, "lepton_raft_term") >= 1
    assert value(before, "lepton_raft_applied_index") >= 1
    assert value(before, "lepton_raft_wal_fsync_duration_seconds_count") >= 1
    assert value(before, "lepton_raft_peer_match_index", peer="c1") >= 1

    async with grpc_channel(replica.address) as (control, agent_stub):
        agent = FakeAgent(agent_stub, "n1", cpu=4000)
        try:
            await agent.next("welcome")
            agent.start_reporting(0.05)
            d = await control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec("web", 3)), timeout=10)
            with pytest.raises(Exception):  # noqa: B017 - any status; the code is what is checked
                await control.GetJob(control_pb2.GetJobRequest(id="nope"), timeout=10)
            # 3 x 500m fit on a 4-core node; 1000 cores fit nowhere.
            await control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec("huge", 1, 1_000_000)), timeout=10)

            async def placed():
                fams = await scrape(addr)
                ok = (
                    value(fams, "lepton_placement_tasks_placed_total") >= 3
                    and value(fams, "lepton_placement_unplaced_tasks", reason="insufficient cpu") == 1
                    and value(fams, "lepton_agent_reports_total") >= 3
                )
                return fams if ok else None

            after = await eventually(placed, "placement and report metrics to move")
            # A server stream (an async generator in the servicer) is counted when it ends.
            events = [e async for e in control.WatchEvents(control_pb2.WatchEventsRequest(), timeout=10)]
            assert events
        finally:
            await agent.close()

        async def streams_counted():
            fams = await scrape(addr)
            watch = value(
                fams, "lepton_grpc_requests_total", method="lepton.v1.ControlService/WatchEvents", code="OK"
            )
            connect = value(fams, "lepton_grpc_requests_total", method="lepton.v1.AgentService/Connect")
            return watch == 1 and connect == 1

        await eventually(streams_counted, "the WatchEvents and Connect streams to be counted")

    assert d.job.id
    assert value(after, "lepton_placement_rounds_total") > value(before, "lepton_placement_rounds_total")
    assert value(after, "lepton_placement_plan_duration_seconds_count") >= 1
    assert value(after, "lepton_tasks", state="assigned") == 3
    assert value(after, "lepton_tasks", state="pending") == 1
    assert value(after, "lepton_nodes", status="ready") == 1
    assert value(after, "lepton_agents_connected") == 1
    assert value(after, "lepton_agent_report_lag_seconds_count") >= 1
    submit = "lepton.v1.ControlService/SubmitJob"
    assert value(after, "lepton_grpc_requests_total", method=submit, code="OK") == 2
    assert (
        value(after, "lepton_grpc_requests_total", method="lepton.v1.ControlService/GetJob", code="NOT_FOUND")
        == 1
    )
    assert value(after, "lepton_grpc_request_duration_seconds_count", method=submit) == 2
    assert value(after, "lepton_raft_proposal_duration_seconds_count") > value(
        before, "lepton_raft_proposal_duration_seconds_count"
    )
    assert value(after, "lepton_raft_commit_index") > value(before, "lepton_raft_commit_index")


async def test_metrics_endpoint_http_edges(replica):
    addr = replica.obs.http.address
    status, _, body = await asyncio.to_thread(http_get, f"http://{addr}/healthz")
    assert status == 200 and "leader" in body
    status, _, _ = await asyncio.to_thread(http_get, f"http://{addr}/nope")
    assert status == 404


def test_registries_are_per_replica():
    a, b = ControllerMetrics(), ControllerMetrics()
    a.observe_moves("rebalance", 2)
    assert a.registry.get_sample_value("lepton_rebalance_moves_total", {"cause": "rebalance"}) == 2
    assert b.registry.get_sample_value("lepton_rebalance_moves_total", {"cause": "rebalance"}) is None


class grpc_channel:  # noqa: N801 - used like a function
    """Control and agent stubs over one channel, closed on exit."""

    def __init__(self, address: str) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(address)

    async def __aenter__(self):
        return control_pb2_grpc.ControlServiceStub(self.channel), agent_pb2_grpc.AgentServiceStub(
            self.channel
        )

    async def __aexit__(self, *exc):
        await self.channel.close()


async def test_auth_refusals_are_counted(tmp_path):
    """With a tokens file: a call without a token and a reader's write are refused, and counted
    both as lepton_auth_failures_total{reason} and as RPCs with their status code."""
    import hashlib

    import grpc

    raft = f"127.0.0.1:{free_port()}"
    reader = "r3ad3r-" + "x" * 32
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{name: dash, role: reader, sha256: {hashlib.sha256(reader.encode()).hexdigest()}}}\n"
    )
    cfg = ControllerConfig(
        id="c1",
        listen="127.0.0.1:0",
        raft_listen=raft,
        peers={"c1": raft},
        data_dir=tmp_path / "c1",
        metrics_listen="127.0.0.1:0",
        tokens_file=tokens,
        grace=0.5,
    )
    server = ControllerServer(cfg)
    await server.start()
    try:
        addr = server.obs.http.address
        before = await scrape(addr)
        async with grpc.aio.insecure_channel(server.address) as ch:
            control = control_pb2_grpc.ControlServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e1:
                await control.ListJobs(control_pb2.ListJobsRequest(stale=True), timeout=5)
            assert e1.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e2:
                await control.SubmitJob(
                    control_pb2.SubmitJobRequest(spec=spec("x", 1)),
                    timeout=5,
                    metadata=(("authorization", f"Bearer {reader}"),),
                )
            assert e2.value.code() == grpc.StatusCode.PERMISSION_DENIED
        after = await scrape(addr)
    finally:
        await server.stop()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The security module's counters are process-wide: compare before and after.
    assert delta("lepton_auth_failures_total", reason="missing_token") == 1
    assert delta("lepton_auth_failures_total", reason="wrong_role") == 1
    list_jobs = "lepton.v1.ControlService/ListJobs"
    assert value(after, "lepton_grpc_requests_total", method=list_jobs, code="UNAUTHENTICATED") == 1
    submit = "lepton.v1.ControlService/SubmitJob"
    assert value(after, "lepton_grpc_requests_total", method=submit, code="PERMISSION_DENIED") == 1
