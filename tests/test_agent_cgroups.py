"""cgroup v2 detection and limit files, on a fake hierarchy in a temp dir (this host's v2 tree has no controllers)."""

from __future__ import annotations

from pathlib import Path

from agent.cgroups import Cgroups, cpu_max_line


def fake_hierarchy(root: Path, controllers: str, unified: bool = False) -> Path:
    mount = root / "unified" if unified else root
    mount.mkdir(parents=True, exist_ok=True)
    (mount / "cgroup.controllers").write_text(controllers + "\n")
    (mount / "cgroup.subtree_control").write_text("")
    return mount


def test_cpu_max_line():
    assert cpu_max_line(1500) == "150000 100000"
    assert cpu_max_line(5) == "1000 100000"  # the kernel's minimum quota
    assert cpu_max_line(0) == "max 100000"


def test_writable_v2_gets_limits(tmp_path):
    mount = fake_hierarchy(tmp_path, "cpuset cpu io memory pids")
    # A real kernel creates these files inside a new cgroup; the fake needs them up front.
    (mount / "lepton").mkdir()
    (mount / "lepton" / "cgroup.subtree_control").write_text("")
    cg = Cgroups.detect(tmp_path)
    assert cg.available, cg.unavailable_reason
    assert (mount / "cgroup.subtree_control").read_text() == "+cpu +memory"
    path = cg.create("job.0.1", cpu_millis=1500, memory_bytes=512 * 2**20)
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert (path / "memory.max").read_text() == str(512 * 2**20)
    Cgroups.add(path, 4242)
    assert (path / "cgroup.procs").read_text() == "4242"


def test_hybrid_without_controllers_says_why(tmp_path):
    fake_hierarchy(tmp_path, "", unified=True)
    cg = Cgroups.detect(tmp_path)
    assert not cg.available
    assert "lacks the cpu and memory controller" in cg.unavailable_reason
    assert cg.create("x.0.1", 1000, 2**20) is None


def test_no_v2_at_all(tmp_path):
    cg = Cgroups.detect(tmp_path)
    assert not cg.available and "no cgroup v2" in cg.unavailable_reason
