"""Starting and stopping real lepton-controller processes for tests.

Every process a test starts is registered in a `ProcessGroup`, whose
`close()` (called from fixtures' finally blocks) kills exactly those PIDs,
so nothing outlives a test even when it fails. Ports come from the OS
(bind to port 0, read it, close): Raft peers must be known up front.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from agent.proctree import find_by_env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControllerProc:
    def __init__(
        self,
        rid: str,
        api: str,
        raft: str,
        peers: dict[str, str],
        data_dir: Path,
        log_dir: Path,
        extra: list[str] | None = None,
    ) -> None:
        self.id = rid
        self.api = api
        self.raft = raft
        self.peers = peers
        self.data_dir = data_dir
        self.log_path = log_dir / f"{rid}.log"
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        peers = ",".join(f"{k}={v}" for k, v in self.peers.items())
        return [
            sys.executable,
            "-m",
            "controller.main",
            "--id",
            self.id,
            "--listen",
            self.api,
            "--raft-listen",
            self.raft,
            "--peers",
            peers,
            "--data-dir",
            str(self.data_dir),
            "--tick-interval",
            "50ms",
            "--election-ticks",
            "10",
            "--log-level",
            "INFO",
            *self.extra,
        ]

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (falls back to SIGKILL)."""
        if self.proc is None:
            return None
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class ControllerCluster:
    """N replicas on loopback with OS-assigned ports."""

    def __init__(self, root: Path, n: int = 3, extra: list[str] | None = None) -> None:
        ids = [f"c{i + 1}" for i in range(n)]
        raft = {rid: f"127.0.0.1:{free_port()}" for rid in ids}
        self.procs = {
            rid: ControllerProc(rid, f"127.0.0.1:{free_port()}", raft[rid], raft, root / rid, root, extra)
            for rid in ids
        }

    @property
    def api_addresses(self) -> list[str]:
        return [p.api for p in self.procs.values()]

    def start(self) -> None:
        for p in self.procs.values():
            p.start()

    def close(self) -> None:
        for p in self.procs.values():
            try:
                p.kill()
            except Exception:  # keep killing the others
                pass

    def logs(self) -> str:
        return "\n".join(f"--- {p.id} ---\n{p.log_tail()}" for p in self.procs.values())


class AgentProc:
    """A real lepton-agent process (python -m agent) with fixed capacity overrides."""

    def __init__(self, node_id: str, controllers: list[str], data_dir: Path, log_dir: Path, extra=()) -> None:
        self.id = node_id
        self.controllers = controllers
        self.data_dir = data_dir
        self.log_path = log_dir / f"agent-{node_id}.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "agent",
            "--controllers",
            ",".join(self.controllers),
            "--node-id",
            self.id,
            "--data-dir",
            str(self.data_dir),
            "--cpus",
            "4",
            "--memory",
            "8Gi",
            "--network",
            "1G",
            "--report-interval",
            "500ms",
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def task_pids(job_id: str | None) -> list[int]:
    """PIDs of task processes agents started for this job (found by LEPTON_JOB_ID in their environment)."""
    return find_by_env("LEPTON_JOB_ID", job_id) if job_id else []


def kill_task_processes(job_id: str | None) -> None:
    for pid in task_pids(job_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
