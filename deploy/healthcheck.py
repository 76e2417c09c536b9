#!/usr/bin/env python3
"""Container health check for Lepton: `healthcheck.py [controller|agent]`, exit 0 when healthy.

controller: the local API answers GetClusterStatus(stale=True) within 2 s.
            Healthy means "serving", not "has a leader": during an election
            every replica is still healthy, and restarting it would only make
            the election slower.
agent:      the agent process is alive. Agents ride out controller outages
            on purpose (their tasks keep running), so losing the controllers
            must not make Docker restart them.
Without an argument the role is guessed from the running processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def _running(*needles: str) -> bool:
    return any(n in cmd for cmd in _cmdlines() for n in needles)


def check_controller() -> bool:
    import grpc

    from lepton.v1 import control_pb2, control_pb2_grpc

    addr = os.environ.get("LEPTON_ADVERTISE") or os.environ.get("LEPTON_LISTEN") or "127.0.0.1:7001"
    host, _, port = addr.rpartition(":")
    if host in ("0.0.0.0", "", "[::]"):
        host = "127.0.0.1"
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        try:
            stub.GetClusterStatus(control_pb2.ClusterStatusRequest(stale=True), timeout=2.0)
        except grpc.RpcError as exc:
            print(f"controller at {host}:{port} does not answer: {exc.code()}")
            return False
    return True


def check_agent() -> bool:
    if _running("lepton-agent", "agent.main"):
        return True
    print("no lepton-agent process")
    return False


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else ("agent" if _running("lepton-agent", "agent.main") else "controller")
    ok = check_agent() if role == "agent" else check_controller()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
