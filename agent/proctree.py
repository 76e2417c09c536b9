"""One cheap pass over /proc: per-process parent, session, CPU ticks, RSS and start time.

Per-task usage needs every task's process tree. psutil's `children()` scans
all of /proc once per call, i.e. once per task per sample; this module reads
each /proc/PID/stat once per sample for all tasks together. A task's tree is
its session (tasks run in their own session) plus any descendants by parent
pid (a child that called setsid() itself still counts).
Also used to recognise a process across agent restarts: (pid, start_ticks)
is unique for the life of the machine, so a reused pid is never mistaken for
a task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    session: int
    state: str
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot; with pid identifies a process uniquely
    rss_bytes: int


def parse_stat(pid: int, text: str) -> ProcStat:
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        session=int(rest[3]),
        state=rest[0],
        cpu_ticks=int(rest[11]) + int(rest[12]),
        start_ticks=int(rest[19]),
        rss_bytes=int(rest[21]) * PAGE_SIZE,
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse_stat(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def scan() -> dict[int, ProcStat]:
    out: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[st.pid] = st
    return out


def uptime_ticks() -> int:
    with open("/proc/uptime", encoding="ascii") as f:
        return int(float(f.read().split()[0]) * CLK_TCK)


def is_alive(pid: int, start_ticks: int) -> bool:
    """True if `pid` is still the process that started at `start_ticks` and has not exited."""
    st = read_stat(pid)
    return st is not None and st.start_ticks == start_ticks and st.state not in ("Z", "X")


def children_map(procs: dict[int, ProcStat]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for st in procs.values():
        children.setdefault(st.ppid, []).append(st.pid)
    return children


def tree(
    root: int, procs: dict[int, ProcStat], children: dict[int, list[int]] | None = None
) -> list[ProcStat]:
    """The live processes of a task rooted at `root`: its session plus descendants."""
    if children is None:
        children = children_map(procs)
    seen = {pid for pid, st in procs.items() if st.session == root}
    stack = [root] if root in procs else []
    while stack:
        pid = stack.pop()
        seen.add(pid)
        stack.extend(c for c in children.get(pid, ()) if c not in seen)
    return [procs[p] for p in seen if procs[p].state not in ("Z", "X")]


def find_by_env(name: str, value: str) -> list[int]:
    """Pids whose initial environment has name=value (used once at start-up, never per sample)."""
    needle = f"{name}={value}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out
