"""Agent configuration: one frozen AgentConfig built from flags, LEPTON_* env vars and a YAML file.

Precedence, highest first: command-line flag, environment variable
(`LEPTON_<NAME>`, e.g. LEPTON_NODE_ID, LEPTON_RESERVE_MEMORY), YAML file
(`--config FILE` or LEPTON_AGENT_CONFIG; keys are the flag names, with dashes
or underscores), built-in default. Every value goes through the parsers of
`lepton.units`, so "10G", "2Gi", "500m" and "1s" mean the same everywhere.
Bad input raises ConfigError with a one-line message naming the culprit;
main() prints it and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton import aio, tls
from lepton.errors import InvalidArgument
from lepton.units import parse_cpu, parse_duration, parse_memory, parse_network


class ConfigError(ValueError):
    """A bad flag, env var or config file entry (message is one line)."""


@dataclass(frozen=True)
class AgentConfig:
    controllers: tuple[str, ...] = ("127.0.0.1:7001",)
    node_id: str = ""  # empty: generated once and kept in data_dir/node_id
    data_dir: Path = Path("/var/lib/lepton-agent")
    labels: Mapping[str, str] = field(default_factory=dict)
    address: str = ""  # what the agent tells the controller it is reachable at
    hostname: str = ""
    report_interval: float = 1.0  # seconds
    # Capacity overrides; None = detect.
    cpus_millis: int | None = None
    memory_bytes: int | None = None
    network_mbps: int | None = None
    gpus: int | None = None
    # Virtual NICs report speed 0; this is what we assume for them.
    default_nic_mbps: int = 1000
    reserve_cpus_millis: int = 0
    reserve_memory_bytes: int = 0
    reserve_network_mbps: int = 0
    disconnect_timeout: float = 30.0
    drain_on_exit: bool = False
    log_max_bytes: int = 10 * 2**20  # per stream, per task, before rotation
    connect_timeout: float = 5.0  # deadline for a controller to answer Connect with Welcome
    peer_timeout: float = 20.0  # unacknowledged data this long -> the connection is dead
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    enable_gpu: bool = True
    enable_cgroups: bool = True
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (docs/observability.md)
    # The standard loop: the agent is not throughput-bound, and uvloop would
    # cost it about 2 MB of its 45 MB RSS budget (bench/agent_footprint.py).
    event_loop: str = "asyncio"  # asyncio | uvloop | auto (lepton/aio.py)
    metrics_listen: str = ""  # HTTP /metrics + /healthz; "" = off
    # TLS towards the controllers (docs/security.md): this agent's certificate
    # (its CN or a SAN must be the node id) and the CA the controllers' certificates
    # are signed by; and the bearer token of role agent bound to this node.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    token: str = field(default="", repr=False)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> AgentConfig:
        """Builds a config from argv (without the program name) and env (default os.environ)."""
        return _build(list(sys.argv[1:] if argv is None else argv), os.environ if env is None else env)

    def with_(self, **changes: Any) -> AgentConfig:
        return dataclasses.replace(self, **changes)


def _parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"invalid boolean {text!r}: use true or false")


def _parse_count(text: str | int) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        raise ValueError(f"invalid count {text!r}: expected a whole number") from None
    if n < 0:
        raise ValueError(f"invalid count {text!r}: must not be negative")
    return n


def _parse_controllers(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    out = tuple(s.strip() for s in items if str(s).strip())
    for addr in out:
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"invalid controller address {addr!r}: expected HOST:PORT")
    if not out:
        raise ValueError("no controller addresses given")
    return out


def _parse_labels(value: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: dict[str, str] = {}
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid label {item!r}: expected KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


def _positive_duration(text: str | float) -> float:
    v = parse_duration(text)
    if v <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return v


def _parse_log_format(text: str) -> str:
    s = str(text).strip().lower()
    if s not in ("text", "json"):
        raise ValueError(f"expected text or json, got {text!r}")
    return s


def _parse_listen(text: str) -> str:
    s = str(text).strip()
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return s


# name -> (parser, dataclass field, help). The name is the flag (--name), the
# env var (LEPTON_NAME) and the YAML key.
_OPTIONS: dict[str, tuple[Callable[[Any], Any], str, str]] = {
    "controllers": (_parse_controllers, "controllers", "comma-separated controller HOST:PORT list"),
    "node-id": (str, "node_id", "node id (default: generated once, kept in the data dir)"),
    "data-dir": (Path, "data_dir", "where the agent keeps its state and task logs"),
    "address": (str, "address", "address reported to the controller (default: hostname)"),
    "hostname": (str, "hostname", "hostname reported to the controller"),
    "report-interval": (_positive_duration, "report_interval", "report period, e.g. 1s or 500ms"),
    "cpus": (parse_cpu, "cpus_millis", "override CPU capacity (cores or millicores: 100, 500m)"),
    "memory": (parse_memory, "memory_bytes", "override memory capacity (e.g. 1Ti, 64Gi)"),
    "network": (parse_network, "network_mbps", "override network capacity in bits/s (e.g. 10G)"),
    "gpus": (_parse_count, "gpus", "override GPU count"),
    "default-nic-speed": (parse_network, "default_nic_mbps", "speed assumed for NICs reporting 0"),
    "reserve-cpus": (parse_cpu, "reserve_cpus_millis", "CPU kept for the system"),
    "reserve-memory": (parse_memory, "reserve_memory_bytes", "memory kept for the system"),
    "reserve-network": (parse_network, "reserve_network_mbps", "network kept for the system (bits/s)"),
    "disconnect-timeout": (
        _positive_duration,
        "disconnect_timeout",
        "after this long without any controller, stop tasks marked stop_on_disconnect",
    ),
    "drain-on-exit": (_parse_bool, "drain_on_exit", "stop all tasks when the agent shuts down"),
    "log-max-size": (parse_memory, "log_max_bytes", "task log size before rotation (e.g. 10Mi)"),
    "connect-timeout": (_positive_duration, "connect_timeout", "deadline for a controller's Welcome"),
    "peer-timeout": (
        _positive_duration,
        "peer_timeout",
        "drop a connection whose data goes unacknowledged this long (dead or partitioned leader)",
    ),
    "backoff-max": (_positive_duration, "backoff_max", "longest wait between reconnect attempts"),
    "gpu": (_parse_bool, "enable_gpu", "probe NVIDIA GPUs through NVML (true/false)"),
    "cgroups": (_parse_bool, "enable_cgroups", "use cgroup v2 limits when writable (true/false)"),
    "log-level": (str, "log_level", "DEBUG, INFO, WARNING or ERROR"),
    "log-format": (_parse_log_format, "log_format", "text (default) or json: one JSON object per line"),
    "event-loop": (
        aio.parse_setting,
        "event_loop",
        "asyncio (default), uvloop, or auto (uvloop when installed)",
    ),
    "metrics-listen": (
        _parse_listen,
        "metrics_listen",
        "HTTP address for /metrics and /healthz, e.g. 127.0.0.1:9102 (default off)",
    ),
    "tls-cert": (Path, "tls_cert", "this agent's certificate (PEM; names the node id); turns TLS on"),
    "tls-key": (Path, "tls_key", "private key of --tls-cert"),
    "tls-ca": (Path, "tls_ca", "CA bundle the controllers' certificates are signed by; turns TLS on"),
    "token": (str, "token", "bearer token (role agent, bound to this node)"),
}
_BOOL_FLAGS = {"drain-on-exit"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2: never usage spam or a traceback
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lepton-agent", description="Lepton node agent.")
    p.add_argument("--config", help="YAML config file (env LEPTON_AGENT_CONFIG)")
    p.add_argument("--label", action="append", help="node label KEY=VALUE (repeatable)")
    for name, (_, _, help_) in _OPTIONS.items():
        if name in _BOOL_FLAGS:
            p.add_argument(f"--{name}", action="store_const", const=True, default=None, help=help_)
        else:
            p.add_argument(f"--{name}", help=help_)
    return p


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml  # only when a file is given: keeps the import off the common path

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: expected a mapping of option: value")
    out: dict[str, Any] = {}
    known = set(_OPTIONS) | {"labels"}
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name not in known:
            raise ConfigError(f"invalid config {path}: unknown option {key!r}")
        out[name] = value
    return out


def _build(argv: list[str], env: Mapping[str, str]) -> AgentConfig:
    ns = _parser().parse_args(argv)
    config_path = ns.config or env.get("LEPTON_AGENT_CONFIG")
    from_file = _load_yaml(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for name, (parse, attr, _) in _OPTIONS.items():
        flag_value = getattr(ns, name.replace("-", "_"))
        env_key = "LEPTON_" + name.replace("-", "_").upper()
        if flag_value is not None:
            raw, source = flag_value, f"--{name}"
        elif env_key in env:
            raw, source = env[env_key], env_key
        elif name in from_file:
            raw, source = from_file[name], f"{config_path}: {name}"
        else:
            continue
        try:
            values[attr] = parse(raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from None
    labels: dict[str, str] = {}
    try:
        if "labels" in from_file:
            labels.update(_parse_labels(from_file["labels"]))
        if "LEPTON_LABELS" in env:
            labels.update(_parse_labels(env["LEPTON_LABELS"]))
        if ns.label:
            labels.update(_parse_labels(ns.label))
    except ValueError as e:
        raise ConfigError(f"label: {e}") from None
    values["labels"] = labels
    cfg = AgentConfig(**values)
    if not cfg.hostname:
        cfg = cfg.with_(hostname=socket.gethostname())
    if not cfg.address:
        cfg = cfg.with_(address=cfg.hostname)
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: invalid level {cfg.log_level!r}")
    try:  # unreadable or non-PEM files fail here, once, not on every reconnect
        tls.TLSFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca).check(need_cert=False)
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None
    return cfg
