"""Configuration of one lepton-controller replica: flags, LEPTON_* variables, YAML.

Precedence, lowest to highest: built-in defaults, the YAML file named by
`--config` (or LEPTON_CONFIG), LEPTON_* environment variables, command-line
flags. Every value is validated here, once, so that the rest of the process
can trust `ControllerConfig`; a bad value raises `ConfigError` with a message
that names the setting, and main() turns it into exit code 2.

The module also holds `Clock`, the injectable time source every loop uses, so
tests can drive time without sleeping.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from lepton import aio
from lepton.units import parse_duration


class ConfigError(ValueError):
    """A setting is missing or malformed. The message names the setting."""


class Clock:
    """Wall time for stamping commands, monotonic time for measuring ages."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class ControllerConfig:
    id: str = ""
    listen: str = "127.0.0.1:7001"
    raft_listen: str = "127.0.0.1:7101"
    peers: dict[str, str] = field(default_factory=dict)  # raft id -> raft address
    data_dir: Path | None = None
    advertise: str = ""  # API address other replicas/clients should use; default: listen
    # Liveness: a node without a report for suspect_after is SUSPECT, for down_after DOWN.
    suspect_after: float = 2.0
    down_after: float = 4.0
    failover_grace: float = -1.0  # < 0: twice down_after
    report_interval: float = 1.0  # what Welcome tells agents
    # Raft timing.
    tick_interval: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_entries: int = 10_000
    fsync: bool = True
    # Leader loops.
    placement_interval: float = 1.0  # periodic fallback; rounds also run on events
    rebalance_auto: bool = False
    rebalance_interval: float = 10.0
    drain_max_parallel: int = 2
    proposal_timeout: float = 5.0
    grace: float = 2.0  # server.stop() grace on shutdown
    max_message_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    event_loop: str = "auto"  # auto | asyncio | uvloop (lepton/aio.py)
    dev: bool = False
    # Observability and backup (docs/observability.md, docs/backup.md).
    metrics_listen: str = ""  # HTTP /metrics + /healthz; "" = off
    log_format: str = "text"  # text | json
    restore: Path | None = None  # seed an empty data dir from this backup file, then run
    # Security (docs/security.md). TLS is on when tls_cert is set; Raft peers
    # then always use mutual TLS. Without TLS only loopback addresses are
    # allowed unless `insecure`.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_client_certs: str = "require"  # API port: require | none (see security.md)
    tokens_file: Path | None = None
    token: str = field(default="", repr=False)  # what this replica presents to other replicas
    insecure: bool = False

    @property
    def api_address(self) -> str:
        return self.advertise or self.listen

    @property
    def grace_after_failover(self) -> float:
        # Agents need time to find a new leader (reconnect backoff, no leader known
        # for a moment); declaring their nodes down meanwhile would restart every task.
        return 2 * self.down_after if self.failover_grace < 0 else self.failover_grace


# name -> (type parser, help). Types are parsed from strings for env/flags and
# from YAML scalars alike; durations accept "500ms", "2s" or plain seconds.
def _duration(text: str) -> float:
    v = parse_duration(text)
    if v <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return v


def _pos_int(text: str) -> int:
    try:
        v = int(str(text))
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if v <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return v


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _address(text: str) -> str:
    s = str(text).strip()
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return s


def _peers(text: str | dict) -> dict[str, str]:
    if isinstance(text, dict):
        items = [(str(k), str(v)) for k, v in text.items()]
    else:
        items = []
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            rid, sep, addr = part.partition("=")
            if not sep or not rid.strip():
                raise ValueError(f"expected ID=HOST:PORT[,ID=HOST:PORT...], got {part!r}")
            items.append((rid.strip(), addr.strip()))
    out: dict[str, str] = {}
    for rid, addr in items:
        if rid in out:
            raise ValueError(f"peer {rid!r} listed twice")
        out[rid] = _address(addr)
    return out


def _client_certs(text: str) -> str:
    s = str(text).strip().lower()
    if s not in ("require", "none"):
        raise ValueError(f"expected require or none, got {text!r}")
    return s


def _log_format(text: str) -> str:
    s = str(text).strip().lower()
    if s not in ("text", "json"):
        raise ValueError(f"expected text or json, got {text!r}")
    return s


def _level(text: str) -> str:
    s = str(text).upper()
    if s not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return s


_SETTINGS: dict[str, tuple] = {
    "id": (str, "this replica's Raft id, e.g. c1 (required unless --dev)"),
    "listen": (_address, "API address (ControlService + AgentService), e.g. 127.0.0.1:7001; port 0 = any"),
    "raft_listen": (_address, "Raft address of this replica, e.g. 127.0.0.1:7101"),
    "peers": (_peers, "all voters incl. this one: c1=127.0.0.1:7101,c2=...,c3=..."),
    "data_dir": (Path, "directory for the Raft log and snapshots (required unless --dev)"),
    "advertise": (_address, "API address announced to others (default: --listen)"),
    "suspect_after": (_duration, "no report for this long -> node suspect (default 2s)"),
    "down_after": (_duration, "no report for this long -> node down, tasks rescheduled (default 4s)"),
    "failover_grace": (
        _duration,
        "after a leader change, no node is declared down for this long (default: 2 x down-after)",
    ),
    "report_interval": (_duration, "report interval asked of agents (default 1s)"),
    "tick_interval": (_duration, "Raft tick (default 50ms)"),
    "election_ticks": (_pos_int, "ticks without a leader before an election (default 10)"),
    "heartbeat_ticks": (_pos_int, "ticks between leader heartbeats (default 2)"),
    "snapshot_entries": (_pos_int, "entries between snapshots (default 10000)"),
    "fsync": (_bool, "fsync the Raft log before acknowledging (default true)"),
    "placement_interval": (_duration, "periodic placement round fallback (default 1s)"),
    "rebalance_auto": (_bool, "rebalance automatically (default false)"),
    "rebalance_interval": (_duration, "automatic rebalance period (default 10s)"),
    "drain_max_parallel": (_pos_int, "tasks moved at once when draining (default 2)"),
    "proposal_timeout": (_duration, "how long a write waits for commit (default 5s)"),
    "grace": (_duration, "shutdown grace for in-flight RPCs (default 2s)"),
    "max_message_bytes": (_pos_int, "largest gRPC message accepted (default 4 MiB)"),
    "log_level": (_level, "DEBUG, INFO, WARNING or ERROR (default INFO)"),
    "log_format": (_log_format, "text (default) or json: one JSON object per line"),
    "event_loop": (aio.parse_setting, "auto (default: uvloop when installed), asyncio or uvloop"),
    "metrics_listen": (_address, "HTTP address for /metrics and /healthz, e.g. 127.0.0.1:9101 (default off)"),
    "restore": (Path, "seed the empty --data-dir from this backup file, then run (docs/backup.md)"),
    "tls_cert": (Path, "PEM certificate of this replica (turns TLS on for the API and Raft)"),
    "tls_key": (Path, "PEM private key of --tls-cert"),
    "tls_ca": (Path, "PEM CA bundle that signs peer, agent and client certificates"),
    "tls_client_certs": (
        _client_certs,
        "API port: require (mutual TLS for agents and clients, default) or none (tokens only)",
    ),
    "tokens_file": (Path, "YAML/JSON file of role tokens (name, role, sha256, node); none = auth off"),
    "token": (str, "bearer token this replica presents to other replicas (operator role)"),
}


def _set(cfg: ControllerConfig, name: str, raw, source: str) -> None:
    parse = _SETTINGS[name][0]
    try:
        value = parse(raw)
    except (ValueError, TypeError) as e:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{source} {flag}: {e}") from None
    setattr(cfg, name, value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lepton-controller",
        description="A Lepton controller replica: Raft-replicated cluster state, the control API and "
        "the agent streams. Settings come from flags, LEPTON_<NAME> environment variables "
        "(e.g. LEPTON_DOWN_AFTER=4s) and an optional YAML file, flags winning.",
        epilog="Example: lepton-controller --id c1 --listen 127.0.0.1:7001 --raft-listen 127.0.0.1:7101 "
        "--peers c1=127.0.0.1:7101,c2=127.0.0.1:7102,c3=127.0.0.1:7103 --data-dir /var/lib/lepton/c1",
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML file with any of the settings below (keys use _ or -)"
    )
    p.add_argument(
        "--dev", action="store_true", help="one-replica controller in a temp dir plus a local agent"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain-text (no TLS) on non-loopback addresses (env LEPTON_INSECURE=1)",
    )
    for name, (_parse, help_) in _SETTINGS.items():
        # Every flag is a string here so that one parser validates flags, env and YAML alike.
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=help_, default=None)
    return p


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ControllerConfig:
    """Builds a validated config. Raises ConfigError (argparse errors exit 2 on their own)."""
    env = dict(os.environ if env is None else env)
    args = build_parser().parse_args(argv)
    cfg = ControllerConfig()

    config_file = args.config or env.get("LEPTON_CONFIG")
    if config_file:
        _apply_yaml(cfg, Path(config_file))
    for name in _SETTINGS:
        key = "LEPTON_" + name.upper()
        if env.get(key, "") != "":
            _set(cfg, name, env[key], f"environment {key} for")
    for name in _SETTINGS:
        raw = getattr(args, name)
        if raw is not None:
            _set(cfg, name, raw, "flag")
    cfg.dev = bool(args.dev) or _bool(env.get("LEPTON_DEV", "") or False)
    try:
        cfg.insecure = cfg.insecure or bool(args.insecure) or _bool(env.get("LEPTON_INSECURE", "") or False)
    except ValueError as e:
        raise ConfigError(f"environment LEPTON_INSECURE: {e}") from None
    validate(cfg)
    return cfg


def _apply_yaml(cfg: ControllerConfig, path: Path) -> None:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    for key, raw in doc.items():
        name = str(key).replace("-", "_")
        if name in ("dev", "insecure"):
            try:
                setattr(cfg, name, _bool(raw))
            except ValueError as e:
                raise ConfigError(f"config file {path}: {key}: {e}") from None
            continue
        if name not in _SETTINGS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        if raw is None:
            continue
        _set(cfg, name, raw if isinstance(raw, (dict, bool)) else str(raw), f"config file {path}:")


def validate(cfg: ControllerConfig) -> None:
    """Cross-field checks that single-value parsers cannot make."""
    validate_security(cfg)
    if cfg.dev:
        # --dev fills in id, peers and data dir itself (see controller/dev.py).
        return
    if not cfg.id:
        raise ConfigError("--id is required (e.g. --id c1)")
    if cfg.data_dir is None:
        raise ConfigError("--data-dir is required")
    if not cfg.peers:
        cfg.peers = {cfg.id: cfg.raft_listen}
    if cfg.id not in cfg.peers:
        raise ConfigError(f"--peers must include this replica's id {cfg.id!r} (got {', '.join(cfg.peers)})")
    if cfg.suspect_after >= cfg.down_after:
        raise ConfigError(
            f"--suspect-after ({cfg.suspect_after:g}s) must be shorter than --down-after ({cfg.down_after:g}s)"
        )
    if cfg.heartbeat_ticks >= cfg.election_ticks:
        raise ConfigError("--heartbeat-ticks must be smaller than --election-ticks")


def validate_security(cfg: ControllerConfig) -> None:
    """TLS files usable, tokens file readable, and plain text only on loopback unless --insecure."""
    from controller.security.identity import is_loopback
    from controller.security.tokens import TokenStore
    from lepton import tls
    from lepton.errors import InvalidArgument

    files = tls.TLSFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
    try:
        files.check(need_cert=True)
        if files.enabled and files.ca is None:
            raise InvalidArgument("TLS needs --tls-ca too: Raft peers authenticate each other with it")
        if cfg.tokens_file is not None:
            TokenStore.load(cfg.tokens_file)
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None
    if files.enabled or cfg.insecure:
        return
    for flag, address in (("--listen", cfg.listen), ("--raft-listen", cfg.raft_listen)):
        if not is_loopback(address):
            raise ConfigError(
                f"refusing to serve plain text on {flag} {address}: give --tls-cert, --tls-key and "
                "--tls-ca, or --insecure (LEPTON_INSECURE=1) to accept unauthenticated traffic"
            )


def settings_table() -> list[tuple[str, str, str]]:
    """(flag, env var, help) rows for docs/controller.md."""
    return [("--" + n.replace("_", "-"), "LEPTON_" + n.upper(), h) for n, (_p, h) in _SETTINGS.items()]


def to_dict(cfg: ControllerConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
