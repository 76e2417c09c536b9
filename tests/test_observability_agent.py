"""Agent /metrics: valid exposition that moves when the agent samples, starts and reaps tasks.

A one-replica controller on the real Raft module and a real agent in the same
event loop (the controller's --dev arrangement); the agent's metrics
endpoint is started with agent.metrics.serve(). A batch job of `true` runs
and exits; the test waits (polling, with a deadline) until the counters say
so and checks the parsed families. A second test runs a real `lepton-agent`
process with --metrics-listen and --log-format json next to a real controller.
"""

from __future__ import annotations

import asyncio

from agent import metrics as agent_metrics
from agent.main import Agent, AgentConfig
from controller.config import ControllerConfig
from controller.server import ControllerServer
from lepton.v1 import control_pb2, control_pb2_grpc, types_pb2
from tests.support.procs import free_port
from tests.support.prom import eventually, http_get, scrape, value


async def test_agent_metrics_move_with_samples_and_tasks(tmp_path):
    import grpc

    raft = f"127.0.0.1:{free_port()}"
    ccfg = ControllerConfig(
        id="c1",
        listen="127.0.0.1:0",
        raft_listen=raft,
        peers={"c1": raft},
        data_dir=tmp_path / "c1",
        placement_interval=0.2,
        grace=0.5,
    )
    controller = ControllerServer(ccfg)
    await controller.start()
    stop = asyncio.Event()
    agent_task = http = None
    try:
        acfg = AgentConfig.from_args(
            ["--controllers", controller.address, "--node-id", "n1", "--data-dir", str(tmp_path / "agent")]
            + ["--cpus", "2", "--memory", "2Gi", "--report-interval", "200ms"],
            env={},
        )
        agent = Agent(acfg)
        http = await agent_metrics.serve(agent, "127.0.0.1:0")
        agent_task = asyncio.create_task(agent.run(stop))
        before = await scrape(http.address)
        assert value(before, "lepton_agent_task_starts_total") == 0
        assert before["lepton_agent_sample_duration_seconds"].type == "histogram"
        assert before["lepton_agent_tasks_running"].type == "gauge"

        async def connected():
            fams = await scrape(http.address)
            return fams if value(fams, "lepton_agent_connected") == 1 else None

        await eventually(connected, "the agent to connect")
        async with grpc.aio.insecure_channel(controller.address) as ch:
            control = control_pb2_grpc.ControlServiceStub(ch)
            spec = types_pb2.JobSpec(
                name="quick",
                count=1,
                type=types_pb2.JOB_TYPE_BATCH,
                template=types_pb2.TaskTemplate(
                    command="true", resources=types_pb2.Resources(cpu_millis=100, memory_bytes=2**20)
                ),
            )
            await control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec), timeout=10)

        async def ran():
            fams = await scrape(http.address)
            done = value(fams, "lepton_agent_task_exits_total", outcome="succeeded") >= 1
            return fams if done and value(fams, "lepton_agent_samples_total") >= 2 else None

        after = await eventually(ran, "the task to start and exit", within=90)
        assert value(after, "lepton_agent_task_starts_total") >= 1
        assert value(after, "lepton_agent_sample_duration_seconds_count") >= 2
        assert value(after, "lepton_agent_connections_total") >= 1
        assert value(after, "lepton_agent_reconnects_total") == 0
        assert value(after, "lepton_agent_desired_version") >= 1
        status, _, body = await asyncio.to_thread(http_get, f"http://{http.address}/healthz")
        assert status == 200 and "connected" in body
    finally:
        stop.set()
        if agent_task is not None:
            await asyncio.wait_for(agent_task, 30)
        if http is not None:
            await http.stop()
        await controller.stop()


def test_agent_process_serves_metrics_and_writes_json_logs(tmp_path):
    """A real `lepton-agent --metrics-listen ... --log-format json` process next to a real controller."""
    import json
    import time

    from tests.support.procs import AgentProc, ControllerCluster, free_port
    from tests.support.prom import http_get

    c = ControllerCluster(tmp_path, 1)
    c.start()
    (p,) = c.procs.values()
    metrics = f"127.0.0.1:{free_port()}"
    agent = AgentProc(
        "n1",
        [p.api],
        tmp_path / "agent",
        tmp_path,
        extra=["--log-format", "json", "--metrics-listen", metrics],
    )
    agent.start()
    try:
        end = time.monotonic() + 45
        text = ""
        while time.monotonic() < end:
            try:
                status, _, text = http_get(f"http://{metrics}/metrics")
            except OSError:
                status = 0
            if (
                status == 200
                and "lepton_agent_connected 1.0" in text
                and "lepton_agent_samples_total 0.0" not in text
            ):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"agent metrics never showed a connected, sampling agent:\n{text}")
        status, _, body = http_get(f"http://{metrics}/healthz")
        assert status == 200 and "connected" in body
        agent.proc.terminate()
        agent.proc.wait(15)
        lines = agent.log_path.read_text().splitlines()
        docs = [json.loads(line) for line in lines]  # every line is one JSON object
        assert docs and all(d.get("node_id") == "n1" for d in docs)
        assert any("metrics on" in d["msg"] for d in docs)
    except BaseException:
        print(c.logs())
        print(agent.log_tail())
        raise
    finally:
        agent.kill()
        c.close()
