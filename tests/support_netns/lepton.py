"""Start Lepton controllers and agents on a NetnsCluster, one process per namespace.

Controllers listen on <host ip>:7001 (API) and <host ip>:7101 (Raft); agents
connect to every controller and report their namespace address. The test
process reaches everyone through the bridge address, so helpers here talk
gRPC straight from the root namespace (`cluster_status`, `find_leader`).

The programs are started as `python -c "from controller.main import main"`
with the repository on PYTHONPATH rather than through console scripts, so a
source checkout works whether or not `pip install -e .` was run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Host, NetnsCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
API_PORT = 7001
RAFT_PORT = 7101

_LAUNCH = "import sys; from {mod} import main; sys.exit(main())"


def lepton_missing() -> str | None:
    """None when controller/main.py and agent/main.py exist; otherwise what is missing."""
    missing = [m for m in ("controller.main", "agent.main") if importlib.util.find_spec(m) is None]
    return f"not written yet: {', '.join(missing)}" if missing else None


def program(module: str) -> list[str]:
    """argv prefix that runs `module.main()` with this interpreter."""
    return [sys.executable, "-c", _LAUNCH.format(mod=module)]


def wait_tcp(ip: str, port: int, timeout: float = 30.0) -> bool:
    """Poll until ip:port accepts a TCP connection (from the root namespace) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class LeptonOnNetns:
    """A Lepton cluster (controllers + agents) on a NetnsCluster whose first hosts are controllers."""

    net: NetnsCluster
    controllers: list[str]
    agents: list[str]
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    controller_args: list[str] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)

    def api(self, name: str) -> str:
        return f"{self.net[name].ip}:{API_PORT}"

    @property
    def api_addresses(self) -> list[str]:
        return [self.api(c) for c in self.controllers]

    @property
    def peers(self) -> str:
        return ",".join(f"{c}={self.net[c].ip}:{RAFT_PORT}" for c in self.controllers)

    def env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
            # Namespace addresses are not loopback, and controllers refuse plain text there unless told
            # otherwise; these test clusters live on a private bridge, so plain text is what we want.
            "LEPTON_INSECURE": "1",
            **self.extra_env,
        }

    def start_controller(self, name: str) -> None:
        host: Host = self.net[name]
        argv = [
            *program("controller.main"),
            "--id", name,
            "--listen", f"{host.ip}:{API_PORT}",
            "--raft-listen", f"{host.ip}:{RAFT_PORT}",
            "--peers", self.peers,
            "--data-dir", str(self.workdir / name / "data"),
            *self.controller_args,
        ]  # fmt: skip
        host.run(argv, env=self.env(), log_path=self.workdir / name / "controller.log", cwd=REPO_ROOT)

    def start_agent(self, name: str, cpus: str = "100", memory: str = "1Ti", network: str = "10G") -> None:
        host: Host = self.net[name]
        argv = [
            *program("agent.main"),
            "--controllers", ",".join(self.api_addresses),
            "--node-id", name,
            "--address", host.ip,
            "--data-dir", str(self.workdir / name / "data"),
            "--label", f"host={name}",
            "--cpus", cpus,
            "--memory", memory,
            "--network", network,
            *self.agent_args,
        ]  # fmt: skip
        host.run(argv, env=self.env(), log_path=self.workdir / name / "agent.log", cwd=REPO_ROOT)

    def start(self) -> None:
        for c in self.controllers:
            self.start_controller(c)
        for a in self.agents:
            self.start_agent(a)

    # ---------------------------------------------------------------- observation over gRPC
    def cluster_status(self, name: str, timeout: float = 2.0):
        """GetClusterStatus(stale=True) answered by controller `name` itself, or None if it can't answer."""
        import grpc

        from lepton.v1 import control_pb2, control_pb2_grpc

        with grpc.insecure_channel(self.api(name)) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            try:
                return stub.GetClusterStatus(control_pb2.ClusterStatusRequest(stale=True), timeout=timeout)
            except grpc.RpcError:
                return None

    def find_leader(self, among: list[str] | None = None, timeout: float = 30.0) -> str | None:
        """The id of a leader, one of `among`, that every controller in `among` names; polls until `timeout`.

        Requiring the leader to be one of `among` matters after a fault: the
        survivors of a killed leader keep naming it until their election
        timeout fires.
        """
        deadline = time.monotonic() + timeout
        among = among or self.controllers
        while time.monotonic() < deadline:
            views = [self.cluster_status(c, timeout=1.0) for c in among]
            if all(v is not None for v in views):
                leaders = {v.leader_id for v in views}
                if len(leaders) == 1 and (leader := leaders.pop()) in among:
                    return leader
            time.sleep(0.2)
        return None

    def ctl(self, *args: str, among: list[str] | None = None, timeout: float = 60):
        """Run lepton-ctl (from the root namespace) against `among` controllers; JSON result or None on failure."""
        addrs = ",".join(self.api(c) for c in (among or self.controllers))
        argv = [*program("leptonctl.main"), "--controllers", addrs, "--timeout", "5s", "-o", "json", *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, **self.env()}, timeout=timeout
        )
        if proc.returncode != 0:
            return None
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else {}
        except json.JSONDecodeError:
            return None

    def logs(self) -> str:
        """Tail of every process log, for assertion messages when something does not come up."""
        out = []
        for log in sorted(self.workdir.glob("*/*.log")):
            lines = log.read_text(errors="replace").splitlines()[-30:]
            out.append(f"==> {log} <==\n" + "\n".join(lines))
        return "\n".join(out)
