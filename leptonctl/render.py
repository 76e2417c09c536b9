"""Printing of lepton-ctl results: aligned tables for people, JSON/YAML for scripts.

Commands hand `emit()` the plain dict (or list) from `leptonctl.views` and a
function that turns it into human text; `-o json|yaml` bypasses that function,
so machine output is exactly the documented schema and nothing else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml

from lepton import units

FORMATS = ("table", "json", "yaml")


def emit(data: Any, fmt: str, human: Callable[[Any], str], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        text = human(data)
        out.write(text if text.endswith("\n") or not text else text + "\n")
    out.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> str:
    """Left-aligned columns separated by two spaces, like kubectl's tables."""
    if not rows and empty:
        return empty
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """'Key:   value' lines, for `show` commands."""
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}" for k, v in pairs)


def cpu(millis: int) -> str:
    return units.format_cpu(millis)


def mem(nbytes: int) -> str:
    return units.format_memory(nbytes)


def net(mbps: int | float) -> str:
    return units.format_network(mbps)


def resources(r: dict[str, int]) -> str:
    """'cpu 2, mem 512Mi, net 100M, gpus 1' from a views.resources dict."""
    parts = [f"cpu {cpu(r['cpu_millis'])}", f"mem {mem(r['memory_bytes'])}", f"net {net(r['network_mbps'])}"]
    if r.get("gpus"):
        parts.append(f"gpus {r['gpus']}")
    return ", ".join(parts)


def labels(d: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in d.items()) or "-"


def pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def ms_time(ms: int) -> str:
    """Unix milliseconds -> 'HH:MM:SS' (UTC), '-' for 0."""
    if not ms:
        return "-"
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).strftime("%H:%M:%S")
