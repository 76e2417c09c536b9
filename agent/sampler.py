"""Live usage of the node and of each task, as rates over monotonic time.

Node: CPU (total, per core, load average) from /proc/stat deltas via psutil,
memory, per-interface network rates (loopback excluded), disk usage of the
data dir, GPUs through `agent.gpu`. Tasks: CPU millicores and RSS of each
task's process tree (`agent.proctree`).
Every rate is a delta between two samples, so the constructor takes a first
("priming") sample: the first report never shows the bogus 0 % or 100 % CPU
that a rate without a previous point would give. The arithmetic lives in pure
functions (cpu_busy_fraction, counter_delta, net_rates) that tests call
directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

from agent import proctree
from agent.clock import SYSTEM_CLOCK, Clock
from agent.gpu import GpuProbe
from lepton.v1 import agent_pb2, types_pb2

# Linux counts guest time inside user/nice as well; adding it again would
# double count (psutil does the same subtraction for cpu_percent).
_NOT_IN_TOTAL = ("guest", "guest_nice")
_IDLE = ("idle", "iowait")


def _total_and_idle(t) -> tuple[float, float]:
    fields = t._fields
    total = sum(getattr(t, f) for f in fields if f not in _NOT_IN_TOTAL)
    idle = sum(getattr(t, f) for f in _IDLE if f in fields)
    return total, idle


def cpu_busy_fraction(prev, cur) -> float:
    """Busy share (0..1) between two psutil cpu_times samples; 0 when no time passed."""
    t0, i0 = _total_and_idle(prev)
    t1, i1 = _total_and_idle(cur)
    dt = t1 - t0
    if dt <= 0:
        return 0.0
    return min(1.0, max(0.0, ((t1 - i1) - (t0 - i0)) / dt))


def counter_delta(prev: int, cur: int) -> int | None:
    """Increase of a byte counter, handling wrap; None when it was reset (re-created NIC).

    Linux exports 64-bit counters but some drivers still wrap at 2**32. A
    decrease from a value below 2**32 is a 32-bit wrap; any other decrease
    means the interface was re-created, and the new value says nothing about
    this interval.
    """
    if cur >= prev:
        return cur - prev
    if prev < 2**32:
        return cur + 2**32 - prev
    return None


@dataclass(frozen=True)
class NicCounters:
    rx: int
    tx: int


def net_rates(
    prev: Mapping[str, NicCounters], cur: Mapping[str, NicCounters], dt: float
) -> dict[str, tuple[float, float]]:
    """Bytes/s per interface present in both samples; new interfaces get a rate from the next sample."""
    out: dict[str, tuple[float, float]] = {}
    if dt <= 0:
        return out
    for name, c in cur.items():
        p = prev.get(name)
        if p is None:
            continue
        drx, dtx = counter_delta(p.rx, c.rx), counter_delta(p.tx, c.tx)
        out[name] = ((drx or 0) / dt, (dtx or 0) / dt)
    return out


def read_nic_counters() -> dict[str, NicCounters]:
    # nowrap=False: we do wrap handling ourselves (psutil's hides resets).
    counters = psutil.net_io_counters(pernic=True, nowrap=False)
    return {n: NicCounters(c.bytes_recv, c.bytes_sent) for n, c in counters.items() if not _is_loopback(n)}


def _is_loopback(name: str) -> bool:
    return name == "lo" or name.startswith("lo:")


@dataclass
class TaskCpuState:
    ticks: dict[tuple[int, int], int]  # (pid, start_ticks) -> cpu ticks at the last sample
    uptime_ticks: int


class Sampler:
    """Stateful sampler; call `sample()` once per report."""

    def __init__(
        self, clock: Clock = SYSTEM_CLOCK, gpu: GpuProbe | None = None, disk_path: str = "/"
    ) -> None:
        self._clock = clock
        self._gpu = gpu
        self._disk_path = disk_path
        self._speeds: dict[str, int] = {}
        self._speeds_at = -1e18
        # Priming: every rate below is relative to these.
        self._t = clock.monotonic()
        self._cpu = psutil.cpu_times()
        self._percpu = psutil.cpu_times(percpu=True)
        self._nics = read_nic_counters()
        procs = proctree.scan()
        self._task_cpu = TaskCpuState(
            {(p.pid, p.start_ticks): p.cpu_ticks for p in procs.values()}, proctree.uptime_ticks()
        )

    def sample(self, task_roots: Mapping[tuple[str, int], int]) -> tuple[types_pb2.NodeUsage, list]:
        """Node usage plus TaskUsage for each (task_id, attempt) -> root pid in task_roots."""
        now = self._clock.monotonic()
        dt = now - self._t
        self._t = now
        cpu, percpu = psutil.cpu_times(), psutil.cpu_times(percpu=True)
        busy = cpu_busy_fraction(self._cpu, cpu)
        per_core = [cpu_busy_fraction(a, b) * 100 for a, b in zip(self._percpu, percpu, strict=False)]
        self._cpu, self._percpu = cpu, percpu
        ncores = len(percpu) or 1
        mem = psutil.virtual_memory()
        load = os.getloadavg()
        nics = read_nic_counters()
        rates = net_rates(self._nics, nics, dt)
        self._nics = nics
        speeds = self._nic_speeds(now)
        usage = types_pb2.NodeUsage(
            time_ms=self._clock.wall_ms(),
            cpu_percent=busy * 100,
            cpu_millis=int(busy * ncores * 1000),
            per_cpu_percent=per_core,
            load1=load[0],
            load5=load[1],
            load15=load[2],
            memory_used_bytes=mem.total - mem.available,
            memory_available_bytes=mem.available,
            memory_total_bytes=mem.total,
        )
        total_bytes = 0.0
        for name in sorted(rates):
            rx, tx = rates[name]
            total_bytes += rx + tx
            usage.interfaces.add(
                name=name, rx_bytes_per_s=rx, tx_bytes_per_s=tx, speed_mbps=speeds.get(name, 0)
            )
        usage.network_mbps = int(total_bytes * 8 / 1e6)
        if self._gpu is not None:
            gpus = self._gpu.sample()
            usage.gpus.extend(gpus)
            usage.gpus_busy = sum(1 for g in gpus if g.utilization_percent >= 1.0)
        try:
            usage.disk_used_percent = psutil.disk_usage(self._disk_path).percent
        except OSError:
            pass
        return usage, self._sample_tasks(task_roots, dt)

    def _nic_speeds(self, now: float) -> dict[str, int]:
        # Link speed rarely changes; re-read once a minute, not every second.
        if now - self._speeds_at > 60:
            self._speeds = {n: s.speed for n, s in psutil.net_if_stats().items() if not _is_loopback(n)}
            self._speeds_at = now
        return self._speeds

    def _sample_tasks(self, task_roots: Mapping[tuple[str, int], int], dt: float) -> list:
        procs = proctree.scan()
        up = proctree.uptime_ticks()
        prev = self._task_cpu
        ticks_now = {(p.pid, p.start_ticks): p.cpu_ticks for p in procs.values()}
        children = proctree.children_map(procs)
        out = []
        for (task_id, attempt), root in task_roots.items():
            members = proctree.tree(root, procs, children) if root > 0 else []
            delta = 0
            for p in members:
                key = (p.pid, p.start_ticks)
                before = prev.ticks.get(key)
                if before is None:
                    # Born since the last scan: all its CPU time is in this interval.
                    # Older but unseen (scan raced its birth): no baseline, count nothing.
                    before = 0 if p.start_ticks >= prev.uptime_ticks else p.cpu_ticks
                delta += max(0, p.cpu_ticks - before)
            millis = int(delta / proctree.CLK_TCK / dt * 1000) if dt > 0 else 0
            out.append(
                agent_pb2.TaskUsage(
                    task_id=task_id,
                    attempt=attempt,
                    cpu_millis=millis,
                    memory_bytes=sum(p.rss_bytes for p in members),
                )
            )
        self._task_cpu = TaskCpuState(ticks_now, up)
        return out


def cpu_count() -> int:
    return psutil.cpu_count(logical=True) or 1


def physical_memory() -> int:
    return psutil.virtual_memory().total


def nic_speeds_mbps() -> Sequence[int]:
    return [s.speed for n, s in psutil.net_if_stats().items() if not _is_loopback(n) and s.isup]
