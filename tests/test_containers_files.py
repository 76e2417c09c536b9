"""Static checks of deploy/: compose file, Dockerfile, scripts and systemd units (no Docker engine needed).

These run in the default test run because they cost well under a second each
and catch the breakages that only show up on someone else's machine: a
compose file docker-compose 1.29 rejects, a unit systemd would refuse, a
script with a syntax error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_has_three_controllers_three_agents_with_health_and_init():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert doc["version"] == "2.4"
    services = doc["services"]
    assert sorted(services) == ["c1", "c2", "c3", "n1", "n2", "n3"]
    for name, svc in services.items():
        assert svc["init"] is True, name
        assert "healthcheck" in svc, name
        assert any(str(v).startswith(f"{name}-data:") for v in svc["volumes"]), name
    peers = {services[c]["environment"]["LEPTON_PEERS"] for c in ("c1", "c2", "c3")}
    assert peers == {"c1=c1:7101,c2=c2:7101,c3=c3:7101"}
    assert set(doc["volumes"]) >= {"c1-data", "c2-data", "c3-data"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_accepted_by_docker_compose():
    proc = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_dockerfile_is_multistage_non_root_with_overridable_base():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\} AS \w+", text, re.M)) == 2
    assert re.search(r"^USER lepton$", text, re.M)
    assert "--no-index" in text


def test_scripts_parse():
    for script in ("containers.sh",):
        text = (DEPLOY / script).read_text()
        assert "set -euo pipefail" in text
        subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
    proc = subprocess.run(
        ["python3", str(DEPLOY / "netns_cluster.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "partition" in proc.stdout


@pytest.mark.parametrize("unit", ["lepton-controller.service", "lepton-agent.service"])
def test_systemd_units_verify(unit, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = (DEPLOY / "systemd" / unit).read_text()
    # The binaries live in /opt/lepton once installed; point at one that exists for the check.
    (tmp_path / unit).write_text(re.sub(r"/opt/lepton/bin/[\w-]+", "/bin/true", text))
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_agent_unit_lets_tasks_survive_agent_restart():
    text = (DEPLOY / "systemd" / "lepton-agent.service").read_text()
    assert re.search(r"^KillMode=process$", text, re.M)
    assert re.search(r"^Delegate=yes$", text, re.M)
