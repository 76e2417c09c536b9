"""Security settings of lepton-controller: insecure mode is explicit, TLS and tokens files are checked at start."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from controller.config import ConfigError, load
from tests.support.pki import make_pki
from tests.support.procs import free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def base(tmp_path, *extra):
    return ["--id", "c1", "--data-dir", str(tmp_path), *extra]


@pytest.mark.parametrize(
    "flags",
    [
        ["--listen", "0.0.0.0:7001"],
        ["--listen", "[::]:7001"],
        ["--raft-listen", "0.0.0.0:7101"],
        ["--listen", "10.1.2.3:7001"],
    ],
)
def test_plain_text_beyond_loopback_needs_insecure(tmp_path, flags):
    with pytest.raises(ConfigError, match="--insecure"):
        load(base(tmp_path, *flags), env={})
    assert load(base(tmp_path, *flags, "--insecure"), env={}).insecure
    assert load(base(tmp_path, *flags), env={"LEPTON_INSECURE": "1"}).insecure
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("insecure: true\n")
    assert load(base(tmp_path, *flags, "--config", str(cfg_file)), env={}).insecure


def test_loopback_needs_nothing(tmp_path):
    cfg = load(base(tmp_path, "--listen", "127.0.0.1:7001", "--raft-listen", "localhost:7101"), env={})
    assert not cfg.insecure and cfg.tls_cert is None


def test_tls_settings_are_checked(tmp_path, pki):
    crt, key = pki.cert("c1")
    ok = base(tmp_path, "--listen", "0.0.0.0:7001", "--tls-cert", str(crt), "--tls-key", str(key))
    cfg = load([*ok, "--tls-ca", str(pki.ca)], env={})
    assert cfg.tls_cert == crt and cfg.tls_client_certs == "require"
    env = {"LEPTON_TLS_CERT": str(crt), "LEPTON_TLS_KEY": str(key), "LEPTON_TLS_CA": str(pki.ca)}
    assert load(base(tmp_path, "--listen", "0.0.0.0:7001"), env=env).tls_ca == pki.ca
    with pytest.raises(ConfigError, match="--tls-ca"):
        load(ok, env={})
    with pytest.raises(ConfigError, match="go together"):
        load(base(tmp_path, "--tls-cert", str(crt), "--tls-ca", str(pki.ca)), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load([*ok, "--tls-ca", str(tmp_path / "missing.crt")], env={})
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM"):
        load([*ok, "--tls-ca", str(tmp_path / "junk.crt")], env={})
    with pytest.raises(ConfigError, match="require or none"):
        load([*ok, "--tls-ca", str(pki.ca), "--tls-client-certs", "maybe"], env={})


def test_tokens_file_is_checked_at_start(tmp_path, pki):
    assert load(base(tmp_path, "--tokens-file", str(pki.tokens_file)), env={}).tokens_file == pki.tokens_file
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens:\n  - {name: x, role: god, sha256: abc}\n")
    with pytest.raises(ConfigError, match="role"):
        load(base(tmp_path, "--tokens-file", str(bad)), env={})


def test_token_is_not_in_the_config_repr(tmp_path):
    cfg = load(base(tmp_path, "--token", "very-secret-value"), env={})
    assert cfg.token == "very-secret-value" and "very-secret-value" not in repr(cfg)


def test_controller_refuses_wildcard_without_tls_and_warns_when_insecure(tmp_path):
    argv = [sys.executable, "-m", "controller.main", *base(tmp_path), "--raft-listen", "127.0.0.1:0"]
    p = subprocess.run([*argv, "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--insecure" in p.stderr and "Traceback" not in p.stderr

    port = free_port()
    log = tmp_path / "c1.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*argv, "--listen", f"0.0.0.0:{port}", "--insecure"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(300):
            text = log.read_text()
            if "listening on" in text or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert "listening on" in text, text
        assert "WARNING" in text and "INSECURE" in text and "--insecure" in text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
