"""`lepton-controller --dev`: a whole cluster for this machine in one command.

Runs a single-voter controller (the real RaftNode, so the dev cluster behaves
like production, only without peers) with its data in a temporary directory,
plus an agent for this machine connected to it. The agent runs in-process
when agent.main offers `run_agent(config, stop)`; otherwise it is started as
a child process (`python -m agent.main`) and stopped with the controller.
Everything is removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
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
    """Runs the agent in this process if agent.main provides run_agent(config, stop). False if not."""
    try:
        from agent.config import AgentConfig
        from agent.main import run_agent
    except ImportError:
        return False
    params = inspect.signature(run_agent).parameters
    # drain_on_exit: a dev cluster takes its tasks with it when it stops.
    acfg = AgentConfig(controllers=(api,), data_dir=data_dir, drain_on_exit=True)
    if len(params) >= 2:
        await run_agent(acfg, stop)
    else:
        task = asyncio.ensure_future(run_agent(acfg))
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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
        if not await _agent_in_process(server.address, agent_dir, stop):
            await _agent_subprocess(server.address, agent_dir, stop)
        await stop.wait()
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
