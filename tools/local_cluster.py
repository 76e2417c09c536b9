#!/usr/bin/env python3
"""Starts and stops a real local Lepton cluster on loopback: 3 controllers + 2 agents.

    python tools/local_cluster.py up [--dir .lepton-local] [--base-port 7001]
    python tools/local_cluster.py down [--dir .lepton-local]
    python tools/local_cluster.py status

Each process is a real `lepton-controller` / `lepton-agent` with its own data
directory and log file under --dir; their PIDs are kept in --dir/pids.json so
that `down` stops exactly the processes `up` started (and nothing else).
Agent n1 is the idea's worked-example machine (100 cores, 1 TiB, 10 Gbit/s,
label site=plant-1); agent n2 is a second, smaller machine (16 cores, 64 GiB).
Agents run with --drain-on-exit so that `down` leaves no task processes behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

AGENTS = {
    "n1": [
        "--cpus",
        "100",
        "--memory",
        "1Ti",
        "--network",
        "10G",
        "--label",
        "site=plant-1",
        "--label",
        "zone=a",
    ],
    "n2": [
        "--cpus",
        "16",
        "--memory",
        "64Gi",
        "--network",
        "10G",
        "--label",
        "site=plant-2",
        "--label",
        "zone=b",
    ],
}


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def up(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    pidfile = root / "pids.json"
    if pidfile.exists() and _alive(json.loads(pidfile.read_text())):
        print(f"a local cluster is already running (see {pidfile}); run `down` first", file=sys.stderr)
        return 1
    root.mkdir(parents=True, exist_ok=True)
    base = args.base_port
    ids = ["c1", "c2", "c3"]
    api = {cid: f"127.0.0.1:{base + i}" for i, cid in enumerate(ids)}
    raft = {cid: f"127.0.0.1:{base + 100 + i}" for i, cid in enumerate(ids)}
    peers = ",".join(f"{cid}={raft[cid]}" for cid in ids)
    pids: dict[str, int] = {}
    for cid in ids:
        argv = [
            _bin("lepton-controller"), "--id", cid, "--listen", api[cid], "--raft-listen", raft[cid],
            "--peers", peers, "--data-dir", str(root / cid),
        ]  # fmt: skip
        pids[cid] = _spawn(argv, root / f"{cid}.log")
    controllers = ",".join(api.values())
    for nid, extra in AGENTS.items():
        argv = [
            _bin("lepton-agent"), "--controllers", controllers, "--node-id", nid,
            "--data-dir", str(root / nid), "--report-interval", "1s", "--drain-on-exit", *extra,
        ]  # fmt: skip
        pids[nid] = _spawn(argv, root / f"{nid}.log")
    pidfile.write_text(json.dumps(pids, indent=2))
    (root / "controllers").write_text(controllers + "\n")
    print(f"started 3 controllers ({controllers}) and 2 agents; logs and data in {root}")
    return 0


def _spawn(argv: list[str], log: Path) -> int:
    # New session: the cluster outlives this script and Ctrl-C in the shell
    # that ran `up`; `down` stops it by PID.
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _alive(pids: dict[str, int]) -> bool:
    for pid in pids.values():
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            continue
    return False


def down(args: argparse.Namespace) -> int:
    pidfile = Path(args.dir).resolve() / "pids.json"
    if not pidfile.exists():
        print("no local cluster recorded; nothing to stop")
        return 0
    pids = json.loads(pidfile.read_text())
    # Agents first (they stop their tasks on the way out: --drain-on-exit),
    # then the controllers, so no controller declares a node down meanwhile.
    for pid in reversed(list(pids.values())):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pids):
        time.sleep(0.2)
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pidfile.unlink()
    print(f"stopped {len(pids)} processes")
    return 0


def status(args: argparse.Namespace) -> int:
    pidfile = Path(args.dir).resolve() / "pids.json"
    if not pidfile.exists():
        print("no local cluster recorded")
        return 1
    for name, pid in json.loads(pidfile.read_text()).items():
        try:
            os.kill(pid, 0)
            state = "running"
        except ProcessLookupError:
            state = "exited"
        print(f"{name:4} pid {pid:7} {state}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--dir", default=".lepton-local", help="data, logs and pid file (default .lepton-local)")
    p.add_argument("--base-port", type=int, default=7001, help="first controller API port (default 7001)")
    args = p.parse_args()
    return {"up": up, "down": down, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
