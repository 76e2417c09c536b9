"""Benchmark: the node agent's own footprint (RSS, CPU % of one core) at 1 Hz reports with 20 running tasks.

Starts a stand-in controller (agent.standin) in this process and a real
`python -m agent` process against it, assigns 20 `sleep 3600` tasks, waits
until all have started, then samples the agent process's RSS and CPU time
over --seconds (default 60). Prints the figures and, with --breakdown, the RSS
of bare interpreters importing the agent's heavy dependencies, to show where
the memory goes. Cleans up every process it started.

    python bench/agent_footprint.py [--seconds 60] [--tasks 20] [--interval 1s] [--breakdown]

Targets (design brief § 9): RSS <= 45 MB, CPU <= 1 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from agent.standin import StandInController, assignment
from lepton.units import parse_duration
from lepton.v1 import agent_pb2

MB = 10**6


def _import_rss(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport psutil; print(psutil.Process().memory_info().rss)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1]) / MB


def breakdown() -> None:
    steps = [
        ("python + psutil", "import psutil"),
        ("+ grpc", "import psutil, grpc"),
        ("+ protobuf stubs", "import psutil, grpc; from lepton.v1 import agent_pb2, agent_pb2_grpc"),
        ("+ grpc.aio", "import psutil, grpc, grpc.aio; from lepton.v1 import agent_pb2, agent_pb2_grpc"),
        ("agent.main (everything)", "import agent.main"),
    ]
    print("RSS of a fresh interpreter after imports (MB):")
    for label, code in steps:
        print(f"  {label:28s} {_import_rss(code):6.1f}")


async def run(seconds: float, ntasks: int, interval: str) -> dict:
    controller = StandInController()
    address = await controller.start()
    data_dir = tempfile.mkdtemp(prefix="lepton-agent-bench-")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--controllers",
        address,
        "--node-id",
        "bench",
        "--data-dir",
        data_dir,
        "--report-interval",
        interval,
        "--drain-on-exit",
        "--log-level",
        "WARNING",
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        controller.set_desired([assignment(f"bench.{i}", "sleep", "3600") for i in range(ntasks)])
        await controller.wait_for(
            lambda: sum(1 for e in controller.events if e.type == agent_pb2.TASK_EVENT_STARTED) >= ntasks, 60
        )
        await asyncio.sleep(2)  # let start-up settle
        proc = psutil.Process(agent.pid)
        reports0 = len(controller.reports)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < seconds:
            rss_samples.append(proc.memory_info().rss)
            await asyncio.sleep(1)
        cpu1 = proc.cpu_times()
        elapsed = time.monotonic() - t0
        mem = proc.memory_full_info()
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            "tasks": ntasks,
            "seconds": elapsed,
            "reports": len(controller.reports) - reports0,
            "rss_mb_max": max(rss_samples) / MB,
            "rss_mb_last": rss_samples[-1] / MB,
            "uss_mb": mem.uss / MB,
            "cpu_percent_of_one_core": 100 * busy / elapsed,
            "threads": proc.num_threads(),
        }
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)  # --drain-on-exit: stops its tasks
            try:
                await asyncio.wait_for(agent.wait(), 30)
            except TimeoutError:
                agent.kill()
                await agent.wait()
        _kill_leftover_tasks(data_dir)
        await controller.stop(None)


def _kill_leftover_tasks(data_dir: str) -> None:
    marker = f"LEPTON_TASK_DIR={data_dir}/".encode()
    for p in psutil.process_iter():
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if any(e.startswith(marker) for e in f.read().split(b"\0")):
                    os.killpg(p.pid, signal.SIGKILL)
        except (OSError, psutil.Error):
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()
    parse_duration(args.interval)
    r = asyncio.run(run(args.seconds, args.tasks, args.interval))
    print(
        f"agent footprint: {r['tasks']} tasks, reports every {args.interval}, "
        f"{r['reports']} reports in {r['seconds']:.0f}s"
    )
    print(f"  RSS      {r['rss_mb_max']:.1f} MB max, {r['rss_mb_last']:.1f} MB last (target <= 45 MB)")
    print(f"  USS      {r['uss_mb']:.1f} MB (private memory)")
    print(f"  CPU      {r['cpu_percent_of_one_core']:.2f} % of one core (target <= 1 %)")
    print(f"  threads  {r['threads']}")
    if args.breakdown:
        breakdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
