"""Configuration of lepton-controller: flags, LEPTON_* env, YAML, and clean errors (exit 2)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from controller.config import ConfigError, load

BASE = ["--id", "c1", "--data-dir", "/tmp/x"]


def test_defaults_and_flags():
    cfg = load(BASE + ["--peers", "c1=127.0.0.1:7101,c2=127.0.0.1:7102", "--down-after", "6s"], env={})
    assert cfg.id == "c1"
    assert cfg.peers == {"c1": "127.0.0.1:7101", "c2": "127.0.0.1:7102"}
    assert cfg.down_after == 6.0
    assert cfg.suspect_after == 2.0
    assert cfg.grace_after_failover == 12.0
    assert cfg.api_address == "127.0.0.1:7001"


def test_single_replica_when_no_peers():
    cfg = load(BASE + ["--raft-listen", "127.0.0.1:9999"], env={})
    assert cfg.peers == {"c1": "127.0.0.1:9999"}


def test_precedence_yaml_env_flag(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("id: c9\ndata-dir: /tmp/y\nsuspect_after: 1s\ndown_after: 3s\nelection_ticks: 20\n")
    cfg = load(["--config", str(f)], env={"LEPTON_DOWN_AFTER": "5s"})
    assert (cfg.id, cfg.suspect_after, cfg.down_after, cfg.election_ticks) == ("c9", 1.0, 5.0, 20)
    cfg = load(["--config", str(f), "--down-after", "7s"], env={"LEPTON_DOWN_AFTER": "5s"})
    assert cfg.down_after == 7.0


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--data-dir", "/tmp/x"], "--id is required"),
        (["--id", "c1"], "--data-dir is required"),
        (BASE + ["--down-after", "soon"], "--down-after"),
        (BASE + ["--suspect-after", "5s", "--down-after", "4s"], "shorter than --down-after"),
        (BASE + ["--peers", "c2=127.0.0.1:1"], "must include this replica"),
        (BASE + ["--peers", "c1"], "ID=HOST:PORT"),
        (BASE + ["--listen", "nope"], "HOST:PORT"),
        (BASE + ["--election-ticks", "0"], "positive"),
        (BASE + ["--fsync", "maybe"], "true or false"),
    ],
)
def test_bad_settings(argv, fragment):
    with pytest.raises(ConfigError, match=".*") as ei:
        load(argv, env={})
    assert fragment in str(ei.value)


def test_bad_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(["--config", str(f)], env={})
    f.write_text("bogus_key: 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(["--config", str(f)], env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load(["--config", str(tmp_path / "missing.yaml")], env={})


@pytest.mark.parametrize(
    "argv",
    [
        ["--down-after", "x", "--id", "c1", "--data-dir", "/tmp/x"],
        ["--no-such-flag"],
        ["--data-dir", "/tmp/x"],
    ],
)
def test_main_exits_2_without_traceback(argv):
    p = subprocess.run(
        [sys.executable, "-m", "controller.main", *argv], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "error" in p.stderr


def test_help_documents_timeouts():
    p = subprocess.run(
        [sys.executable, "-m", "controller.main", "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0
    for flag in (
        "--suspect-after",
        "--down-after",
        "--tick-interval",
        "--election-ticks",
        "--peers",
        "--config",
    ):
        assert flag in p.stdout


@pytest.mark.parametrize("which", ["--listen", "--raft-listen"])
def test_port_in_use_is_a_clear_error(tmp_path, which):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = f"127.0.0.1:{s.getsockname()[1]}"
        addrs = {"--listen": "127.0.0.1:0", "--raft-listen": "127.0.0.1:0", which: busy}
        argv = ["--id", "c1", "--data-dir", str(tmp_path)] + [x for kv in addrs.items() for x in kv]
        p = subprocess.run(
            [sys.executable, "-m", "controller.main", *argv], capture_output=True, text=True, timeout=60
        )
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "lepton-controller: error: cannot" in p.stderr
