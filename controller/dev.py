"""`lepton-controller --dev`: a whole cluster for this machine in one command.

Runs a single-voter controller (the real RaftNode, so the dev cluster behaves
like production, only without peers) with its data in a temporary directory,
plus an agent for this machine connected to it. The agent runs in-process
(agent.main.run_agent); should that not be importable it is started as a
child process (`python -m agent.main`). On exit the leader loops stop first,
then the agent stops its tasks (drain on exit), then the controller; the
temporary directory is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from controller.config import ControllerConfig

log = logging.getLogger("lepton.controller.dev")

DEV_ID = "dev"


def dev_config(cfg: ControllerConfig, tmp: Path) -> ControllerConfig:
    """The single-replica settings; explicit --listen etc. are kept."""
    cfg.id = cfg.id or DEV_ID
    cfg.data_dir = cfg.data_dir or tmp / "controller"
    cfg.peers = {cfg.id: cfg.raft_listen}
    return cfg


async def _agent_in_process(api: str, data_dir: Path, stop: asyncio.Event) -> bool:
    """Runs the agent in this process until `stop` is set. False if agent.main is not available."""
    try:
        from agent.config import AgentConfig
        from agent.main import run_agent
    except ImportError:
        return False
    # drain_on_exit: a dev cluster takes its tasks with it when it stops.
    acfg = AgentConfig(controllers=(api,), data_dir=data_dir, drain_on_exit=True)
    await run_agent(acfg, stop)
    return True


async def _agent_subprocess(api: str, data_dir: Path, stop: asyncio.Event) -> None:
    argv = [sys.executable, "-m", "agent.main", "--controllers", api, "--data-dir", str(data_dir)]
    log.info("starting the local agent as a child process: %s", " ".join(argv))
    # Popen returns at once (fork/exec); the waits below run in a thread.
    proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONUNBUFFERED="1"))  # noqa: ASYNC220
    try:
        while proc.poll() is None and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        if proc.poll() is not None and not stop.is_set():
            log.error("the local agent exited with status %s", proc.returncode)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def _run_agent(api: str, data_dir: Path, stop: asyncio.Event) -> None:
    if not await _agent_in_process(api, data_dir, stop):
        await _agent_subprocess(api, data_dir, stop)


async def run_dev(cfg: ControllerConfig, stop: asyncio.Event | None = None) -> None:
    from controller.server import ControllerServer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = Path(tempfile.mkdtemp(prefix="lepton-dev-"))
    cfg = dev_config(cfg, tmp)
    server = ControllerServer(cfg)
    try:
        await server.start()
        print(
            f"lepton dev cluster: controller {cfg.id} on {server.address} (data in {tmp}); "
            f"try: lepton-ctl --controllers {server.address} cluster status",
            file=sys.stderr,
            flush=True,
        )
        agent_dir = tmp / "agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        agent_stop = asyncio.Event()
        agent = asyncio.create_task(_run_agent(server.address, agent_dir, agent_stop))
        await stop.wait()
        # Stop placing first, so the agent's drain-on-exit is not undone by a new placement.
        await server.leader_loops.stop()
        agent_stop.set()
        await agent
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
