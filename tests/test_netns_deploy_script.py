"""deploy/netns_cluster.py end to end: up, fault commands, status, down leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support_netns.lepton import lepton_missing
from tests.support_netns.netns import _sh, netns_supported

pytestmark = pytest.mark.netns

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "netns_cluster.py"


def script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--name", name, *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def leftovers(prefix: str) -> list[str]:
    text = _sh(["ip", "netns", "list"]).stdout + _sh(["ip", "-o", "link", "show"]).stdout
    text += _sh(["iptables", "-w", "-S", "FORWARD"]).stdout
    return [line for line in text.splitlines() if prefix in line]


def test_script_up_faults_down():
    if reason := netns_supported() or lepton_missing():
        pytest.skip(reason)
    name = f"t{os.getpid() % 10**6}"  # unique per run, fits in interface names
    try:
        up = script(name, "up", "--controllers", "3", "--agents", "1")
        assert "leader" in up.stdout and "LEPTON_CONTROLLERS=" in up.stdout
        script(name, "partition", "c1", "c2,c3")
        status = script(name, "status").stdout
        assert status.count("fault:") == 4, status  # c1 drops c2 and c3; c2 and c3 drop c1
        script(name, "heal")
        script(name, "kill", "n1")
        assert "DOWN" in script(name, "status").stdout
        script(name, "restart", "n1")
        assert "fault:" not in script(name, "status").stdout
    finally:
        script(name, "down", check=False)
    assert leftovers(f"ld{name}") == []
    assert not (Path("/var/tmp/lepton-netns") / name).exists()
