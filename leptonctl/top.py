"""`lepton-ctl top`: a live view of every node's use against capacity and reservations.

Like `kubectl top nodes` crossed with htop: per node, each dimension (cpu,
memory, network, GPUs) shows live *use* (from the agent's last report) and
*reservations* (sum of requests of tasks placed there) against allocatable.
A frame is a pure function of the data (`frame()`), so `--once` (one frame,
then exit; what tests use) and the refreshing loop print exactly the same
thing. The loop redraws with plain ANSI escapes; no curses needed.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from typing import Any

from lepton.client import LeptonClient
from leptonctl import render, views

_BAR_WIDTH = 10


def bar(part: float, whole: float) -> str:
    """'[####......]' for part/whole; '[    -     ]' when there is no capacity."""
    if whole <= 0:
        return "[" + "-".center(_BAR_WIDTH) + "]"
    filled = max(0, min(_BAR_WIDTH, round(_BAR_WIDTH * part / whole)))
    return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"


def _cell(used: float, total: float, fmt: Any) -> str:
    return f"{bar(used, total)} {fmt(used)}/{fmt(total)} {render.pct(used, total)}"


def snapshot(client: LeptonClient) -> dict[str, Any]:
    """What one frame shows, in the `views` schema (also what `top -o json` prints)."""
    nodes = [views.node(n) for n in client.list_nodes()]
    counts: dict[str, int] = {}
    for t in client.list_tasks():
        if t.node_id and views.task_state(t.state) in ("assigned", "starting", "running", "stopping"):
            counts[t.node_id] = counts.get(t.node_id, 0) + 1
    for n in nodes:
        n["tasks"] = counts.get(n["id"], 0)
    return {"time_ms": int(time.time() * 1000), "nodes": nodes}


def frame(snap: dict[str, Any]) -> str:
    nodes = snap["nodes"]
    now = _dt.datetime.fromtimestamp(snap["time_ms"] / 1000, tz=_dt.UTC).strftime("%H:%M:%S")
    header = (
        f"lepton top - {now} UTC - {len(nodes)} node(s) - use = live, rsv = reserved by tasks, of allocatable"
    )
    rows = []
    for n in nodes:
        a, r, u = n["allocatable"], n["allocated"], n["usage"]
        for i, (dim, key, ukey, fmt) in enumerate(
            (
                ("cpu", "cpu_millis", "cpu_millis", render.cpu),
                ("mem", "memory_bytes", "memory_bytes", render.mem),
                ("net", "network_mbps", "network_mbps", render.net),
                ("gpu", "gpus", "gpus", str),
            )
        ):
            if dim == "gpu" and not a["gpus"] and not r["gpus"]:
                continue
            first = i == 0
            rows.append(
                (
                    n["id"] if first else "",
                    n["state"] if first else "",
                    str(n["tasks"]) if first else "",
                    dim,
                    _cell(u[ukey], a[key], fmt),
                    _cell(r[key], a[key], fmt),
                )
            )
    return header + "\n\n" + render.table(("NODE", "STATE", "TASKS", "", "USE", "RSV"), rows, "no nodes")


def run(client: LeptonClient, args: Any) -> int:
    if args.once or args.output != "table":
        snap = snapshot(client)
        render.emit(snap, args.output, frame)
        return 0
    out = sys.stdout
    try:
        while True:
            text = frame(snapshot(client))
            # Home the cursor and clear the screen, then draw: a plain-ANSI redraw.
            out.write(
                "\x1b[H\x1b[2J" + text + "\n\n(refreshing every " + f"{args.interval:g}s; Ctrl-C to quit)\n"
            )
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
