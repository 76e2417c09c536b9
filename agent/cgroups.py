"""cgroup v2 limits for tasks (cpu.max, memory.max), when the unified hierarchy is writable.

`Cgroups.detect()` finds the cgroup2 mount (pure v2 at /sys/fs/cgroup or the
hybrid layout's /sys/fs/cgroup/unified), checks that the cpu and memory
controllers are available and can be delegated to a `lepton` subtree, and
otherwise returns a manager that enforces nothing and says why
(`unavailable_reason`), which the agent logs once and attaches to every
task's STARTED event. Limits come from the task's resource request: cpu.max
= request as quota per 100 ms period, memory.max = the memory request.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("lepton.agent.cgroups")

PERIOD_US = 100_000


def cpu_max_line(cpu_millis: int) -> str:
    """cpu.max content for a millicore limit: '150000 100000' for 1500m; 'max' for none."""
    if cpu_millis <= 0:
        return f"max {PERIOD_US}"
    # The kernel refuses quotas under 1 ms.
    return f"{max(1000, cpu_millis * PERIOD_US // 1000)} {PERIOD_US}"


class Cgroups:
    def __init__(self, base: Path | None, reason: str = "") -> None:
        self.base = base
        self.unavailable_reason = reason

    @property
    def available(self) -> bool:
        return self.base is not None

    @classmethod
    def detect(cls, root: Path = Path("/sys/fs/cgroup"), name: str = "lepton") -> Cgroups:
        mount = None
        for candidate in (root, root / "unified"):
            if (candidate / "cgroup.controllers").exists():
                mount = candidate
                break
        if mount is None:
            return cls(None, "no cgroup v2 hierarchy mounted")
        try:
            controllers = (mount / "cgroup.controllers").read_text().split()
        except OSError as e:
            return cls(None, f"cannot read {mount}/cgroup.controllers: {e.strerror}")
        missing = [c for c in ("cpu", "memory") if c not in controllers]
        if missing:
            return cls(
                None,
                f"cgroup v2 at {mount} lacks the {' and '.join(missing)} controller(s) "
                "(held by cgroup v1 on this host)",
            )
        base = mount / name
        try:
            _enable(mount)
            base.mkdir(exist_ok=True)
            _enable(base)
        except OSError as e:
            return cls(None, f"cgroup v2 at {mount} is not writable: {e.strerror}")
        return cls(base)

    def create(self, name: str, cpu_millis: int, memory_bytes: int) -> Path | None:
        """A cgroup for one task with its limits; None when cgroups are unavailable."""
        if self.base is None:
            return None
        path = self.base / name
        path.mkdir(exist_ok=True)
        (path / "cpu.max").write_text(cpu_max_line(cpu_millis))
        (path / "memory.max").write_text(str(memory_bytes) if memory_bytes > 0 else "max")
        return path

    @staticmethod
    def add(path: Path, pid: int) -> None:
        (path / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def kill(path: Path) -> None:
        """SIGKILL everything in the cgroup (also processes that left the task's process group)."""
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError:
            pass

    @staticmethod
    def remove(path: str | Path) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass  # still busy or already gone: retried when the record is forgotten


def _enable(cgroup: Path) -> None:
    current = (cgroup / "cgroup.subtree_control").read_text().split()
    wanted = [c for c in ("cpu", "memory") if c not in current]
    if wanted:
        (cgroup / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
