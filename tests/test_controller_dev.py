"""`lepton-controller --dev`: one command gives a working one-node cluster that runs a task."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import grpc

from lepton.v1 import control_pb2, control_pb2_grpc, types_pb2
from tests.support.procs import kill_task_processes, task_pids


def start_dev(log):
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.main",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--raft-listen",
                "127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


async def test_dev_mode_runs_a_task_and_shuts_down_cleanly(tmp_path):
    log = tmp_path / "dev.log"
    proc = start_dev(log)
    job_id = None
    try:
        addr = None
        for _ in range(300):
            m = re.search(r"controller \S+ on (127\.0\.0\.1:\d+)", log.read_text())
            if m:
                addr = m.group(1)
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.1)
        assert addr, log.read_text()
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = control_pb2_grpc.ControlServiceStub(ch)

            async def until(fn, what):
                for _ in range(300):
                    try:
                        if await fn():
                            return
                    except grpc.aio.AioRpcError:
                        pass
                    await asyncio.sleep(0.1)
                raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")

            async def node_ready():
                nodes = (await stub.ListNodes(control_pb2.ListNodesRequest(), timeout=5)).nodes
                return len(nodes) == 1 and nodes[0].status == types_pb2.NODE_STATUS_READY

            await until(node_ready, "the local agent")
            # Memory only: the shared test machine's CPUs may be busy, and live usage counts.
            spec = types_pb2.JobSpec(
                name="hello",
                count=1,
                template=types_pb2.TaskTemplate(
                    command="sleep", args=["30"], resources=types_pb2.Resources(memory_bytes=16 * 2**20)
                ),
            )
            job_id = (await stub.SubmitJob(control_pb2.SubmitJobRequest(spec=spec), timeout=10)).job.id

            async def running():
                tasks = (await stub.ListTasks(control_pb2.ListTasksRequest(job_id="hello"), timeout=5)).tasks
                return tasks and tasks[0].state == types_pb2.TASK_STATE_RUNNING

            await until(running, "the task to run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
        # The dev agent stops its tasks on exit: no process of the job is left behind.
        assert task_pids(job_id) == [], log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        kill_task_processes(job_id)
