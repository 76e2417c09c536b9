"""Real lepton-agent processes against a TLS controller with tokens.

An agent with its own certificate and node-bound token registers; one with
another node's certificate, a wrong token, or a certificate of another CA is
refused (its log names the refusal) and its node never appears. Also the
agent's TLS and token settings themselves.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from agent.config import AgentConfig, ConfigError
from lepton import errors, tls
from lepton.client import LeptonClient
from tests.support.pki import make_pki
from tests.support.procs import AgentProc, ControllerProc, free_port


def wait_for(predicate, what: str, timeout: float = 60.0, on_fail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


@pytest.fixture
def tls_controller(tmp_path):
    pki = make_pki(tmp_path)
    crt, key = pki.cert("c1")
    raft = f"127.0.0.1:{free_port()}"
    proc = ControllerProc(
        "c1",
        f"127.0.0.1:{free_port()}",
        raft,
        {"c1": raft},
        tmp_path / "c1",
        tmp_path,
        ["--tls-cert", str(crt), "--tls-key", str(key), "--tls-ca", str(pki.ca)]
        + ["--tokens-file", str(pki.tokens_file)],
    )
    agents: list[AgentProc] = []
    try:
        proc.start()
        yield pki, proc, agents
    finally:
        for a in agents:
            a.kill()
        proc.kill()


def agent_flags(pki, cert: str, token: str, foreign: bool = False) -> list[str]:
    crt, key = pki.cert(cert, foreign)
    ca = (pki.foreign if foreign else pki.dir) / "ca.crt"
    return ["--tls-cert", str(crt), "--tls-key", str(key), "--tls-ca", str(ca), "--token", token]


def test_agents_register_only_with_their_own_certificate_and_token(tmp_path, tls_controller):
    pki, proc, agents = tls_controller
    crt, key = pki.cert("alice")
    creds = tls.channel_credentials(tls.TLSFiles(crt, key, pki.ca))
    client = LeptonClient([proc.api], timeout=10, token=pki.tokens["alice"], credentials=creds)

    def start(name: str, node_id: str, flags: list[str]) -> AgentProc:
        a = AgentProc(node_id, [proc.api], tmp_path / f"agent-{name}", tmp_path / name, flags)
        (tmp_path / name).mkdir(exist_ok=True)
        agents.append(a)
        a.start()
        return a

    def node_ids() -> set[str]:
        try:
            return {n.id for n in client.list_nodes()}
        except errors.LeptonError:
            return set()

    with client:
        good = start("good", "n1", agent_flags(pki, "n1", pki.tokens["agent-n1"]))
        wait_for(
            lambda: "n1" in node_ids(), "n1 to register", on_fail=lambda: good.log_tail() + proc.log_tail()
        )

        refused = {
            # node n2's token, but n1's certificate
            "wrong-cert": (agent_flags(pki, "n1", pki.tokens["agent-n2"]), "PERMISSION_DENIED"),
            # n2's certificate, n1's token (bound to another node)
            "wrong-node-token": (agent_flags(pki, "n2", pki.tokens["agent-n1"]), "PERMISSION_DENIED"),
            "bad-token": (agent_flags(pki, "n2", "not-a-token"), "UNAUTHENTICATED"),
            "foreign-ca": (agent_flags(pki, "n2", pki.tokens["agent-n2"], foreign=True), "UNAVAILABLE"),
        }
        for name, (flags, code) in refused.items():
            a = start(name, "n2", flags)
            wait_for(
                lambda a=a, code=code: code in a.log_path.read_text(),
                f"{name}: {code} in the agent log",
                on_fail=a.log_tail,
            )
            assert "n2" not in node_ids(), name
            a.kill()
        assert node_ids() == {"n1"}
        for name in refused:
            assert pki.tokens["agent-n2"] not in (tmp_path / name / "agent-n2.log").read_text()


def test_agent_tls_and_token_settings(tmp_path):
    pki = make_pki(tmp_path)
    crt, key = pki.cert("n1")
    base = ["--controllers", "127.0.0.1:7001", "--data-dir", str(tmp_path)]
    cfg = AgentConfig.from_args([*base, "--tls-ca", str(pki.ca)], env={"LEPTON_TOKEN": "S3cr3t-T0k3n"})
    assert cfg.token == "S3cr3t-T0k3n" and cfg.tls_ca == pki.ca and "S3cr3t" not in repr(cfg)
    env = {"LEPTON_TLS_CERT": str(crt), "LEPTON_TLS_KEY": str(key)}
    assert AgentConfig.from_args(base, env=env).tls_key == key
    with pytest.raises(ConfigError, match="go together"):
        AgentConfig.from_args([*base, "--tls-cert", str(crt)], env={})
    with pytest.raises(ConfigError, match="cannot read"):
        AgentConfig.from_args([*base, "--tls-ca", str(tmp_path / "missing.crt")], env={})
    p = subprocess.run(
        [sys.executable, "-m", "agent", *base, "--tls-key", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "go together" in p.stderr
