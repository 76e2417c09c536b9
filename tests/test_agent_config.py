"""Agent configuration: flag > LEPTON_* env > YAML precedence, unit parsing, one-line errors, capacity fingerprint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.capacity import Detected, fingerprint, network_capacity
from agent.config import AgentConfig, ConfigError
from agent.state_store import StateStore


def test_flags_parse_units_and_labels():
    cfg = AgentConfig.from_args(
        [
            "--controllers", "127.0.0.1:7001,127.0.0.1:7002",
            "--node-id", "n1",
            "--data-dir", "/tmp/x",
            "--label", "zone=a",
            "--label", "rack=r1",
            "--report-interval", "500ms",
            "--cpus", "100", "--memory", "1Ti", "--network", "10G", "--gpus", "0",
            "--reserve-cpus", "1", "--reserve-memory", "2Gi",
            "--drain-on-exit",
        ],
        env={},
    )  # fmt: skip
    assert cfg.controllers == ("127.0.0.1:7001", "127.0.0.1:7002")
    assert cfg.node_id == "n1" and cfg.data_dir == Path("/tmp/x")
    assert dict(cfg.labels) == {"zone": "a", "rack": "r1"}
    assert cfg.report_interval == 0.5
    assert (cfg.cpus_millis, cfg.memory_bytes, cfg.network_mbps, cfg.gpus) == (100_000, 2**40, 10_000, 0)
    assert (cfg.reserve_cpus_millis, cfg.reserve_memory_bytes) == (1000, 2 * 2**30)
    assert cfg.drain_on_exit is True


def test_precedence_flag_over_env_over_yaml(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text(
        "node_id: from-yaml\ncpus: 4\nmemory: 8Gi\nlabels: {zone: y, disk: ssd}\nreserve-memory: 1Gi\n"
    )
    env = {"LEPTON_AGENT_CONFIG": str(f), "LEPTON_CPUS": "8", "LEPTON_LABELS": "zone=e"}
    cfg = AgentConfig.from_args(["--memory", "16Gi", "--label", "zone=f"], env=env)
    assert cfg.node_id == "from-yaml"
    assert cfg.cpus_millis == 8000  # env beats yaml
    assert cfg.memory_bytes == 16 * 2**30  # flag beats yaml
    assert cfg.reserve_memory_bytes == 2**30
    assert dict(cfg.labels) == {"zone": "f", "disk": "ssd"}


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--cpus", "lots"], {}, "--cpus"),
        (["--memory", "12Q"], {}, "--memory"),
        (["--label", "novalue"], {}, "KEY=VALUE"),
        (["--controllers", "nohostport"], {}, "HOST:PORT"),
        (["--report-interval", "0s"], {}, "positive"),
        ([], {"LEPTON_NETWORK": "fast"}, "LEPTON_NETWORK"),
        (["--bogus"], {}, "unrecognized"),
    ],
)
def test_bad_input_is_a_config_error(argv, env, needle):
    with pytest.raises(ConfigError, match=needle):
        AgentConfig.from_args(argv, env=env)


def test_bad_yaml_is_a_config_error(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("cpus: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        AgentConfig.from_args(["--config", str(f)], env={})
    f.write_text("colour: blue\n")
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        AgentConfig.from_args(["--config", str(f)], env={})


def test_cli_bad_flag_one_line_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "agent", "--memory", "lots"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lepton-agent: error: --memory")
    assert "Traceback" not in r.stderr


def test_fingerprint_detects_and_overrides():
    found = Detected(
        cpus=2, memory_bytes=8 * 2**30, nic_speeds_mbps=[0, 0], gpus=1, gpu_memory_bytes=80 * 2**30
    )
    base = AgentConfig.from_args(["--reserve-cpus", "500m", "--reserve-network", "100M"], env={})
    cap, res = fingerprint(base, found)
    assert (cap.cpu_millis, cap.memory_bytes, cap.network_mbps, cap.gpus) == (2000, 8 * 2**30, 1000, 1)
    assert cap.gpu_memory_bytes == 80 * 2**30
    assert (res.cpu_millis, res.network_mbps) == (500, 100)
    big = AgentConfig.from_args(
        ["--cpus", "100", "--memory", "1Ti", "--network", "10G", "--gpus", "0"], env={}
    )
    cap, _ = fingerprint(big, found)
    assert (cap.cpu_millis, cap.memory_bytes, cap.network_mbps, cap.gpus) == (100_000, 2**40, 10_000, 0)
    assert cap.gpu_memory_bytes == 0


def test_network_capacity_uses_default_for_virtual_nics():
    assert network_capacity([], 1000) == 1000
    assert network_capacity([0, 0], 2500) == 2500
    assert network_capacity([0, 10_000, 1000], 1000) == 10_000


def test_node_id_is_stable_across_restarts(tmp_path):
    generated = StateStore(tmp_path).node_id()
    assert generated and StateStore(tmp_path).node_id() == generated
    assert StateStore(tmp_path).node_id("n7") == "n7"
    assert StateStore(tmp_path).node_id() == "n7"
