"""A cluster of "hosts" on one machine: one network namespace per host on a private bridge.

Every host gets its own namespace, a veth pair whose outer end is enslaved to a
bridge private to this cluster, and its own address in a 10.x.y.0/24 subnet
chosen per run. The bridge itself carries the .1 address so that the test
process (in the root namespace) can reach every host directly.

Faults are injected the way a real network fails, not by closing sockets:

* `kill(host)` SIGKILLs every process in the host's namespace (not only the
  ones we started: `ip netns pids` finds whatever they forked);
* `restart(host)` re-runs the commands that were started there with `run()`;
* `partition(a, b, one_way=False)` installs iptables DROP rules on the INPUT
  chain of the *receiving* namespace(s), so packets vanish silently (peers
  see timeouts, as with a cut cable, rather than the instant EPERM an OUTPUT
  rule would give the sender);
* `isolate(host)` cuts a host off from every other host and the bridge;
* `heal()` flushes every rule.

Nothing here touches the root namespace's firewall except one ACCEPT rule
for the bridge in FORWARD (dockerd sets that chain's policy to DROP and, with
br_netfilter loaded, bridged frames traverse it), removed on teardown.

Names carry a per-run prefix (`lp<pid hex>-<seq>`), so concurrent runs never
collide and `gc_stale()` can remove what a killed run left behind without
touching anything that belongs to a live process.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_SEQ = itertools.count(1)
# Test prefixes embed the owner's PID so stale ones can be recognised safely.
_TEST_PREFIX_RE = re.compile(r"^lp([0-9a-f]+)-")
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes.


class NetnsError(RuntimeError):
    """A namespace operation failed (message carries the command and its stderr)."""


def _sh(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} -> rc {proc.returncode}: {proc.stderr.strip()}")
    return proc


def missing_tools() -> list[str]:
    """Binaries this module needs that are not installed (`ip` from iproute2, `iptables`)."""
    return [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]


def ensure_tools() -> None:
    """Install iptables from apt when missing (the fixture calls this once; CI should preinstall)."""
    if shutil.which("iptables") is None and shutil.which("apt-get") is not None and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "iptables"], env=env, capture_output=True, timeout=300
        )


def netns_supported() -> str | None:
    """None when namespaces, veths and iptables work here; otherwise the reason they don't."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if missing := missing_tools():
        return f"missing tools: {', '.join(missing)} (apt-get install iproute2 iptables)"
    probe = f"lp{os.getpid():x}-probe{next(_SEQ)}"
    try:
        _sh(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        # iptables inside a fresh namespace needs the nf_tables/xtables modules.
        proc = _sh(["ip", "netns", "exec", probe, "iptables", "-w", "-S", "INPUT"], check=False)
        if proc.returncode != 0:
            return f"iptables does not work inside a namespace: {proc.stderr.strip()}"
    finally:
        _sh(["ip", "netns", "del", probe], check=False)
    return None


@dataclass
class Command:
    """What `Host.run` was asked to start, kept so `restart()` can start it again."""

    argv: list[str]
    env: dict[str, str] | None = None
    log_path: str | None = None
    cwd: str | None = None


@dataclass
class Host:
    """One machine of the cluster: a namespace with one interface (eth0) and one address."""

    name: str
    netns: str
    ip: str
    veth: str  # the outer end, in the root namespace, enslaved to the bridge
    commands: list[Command] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
        record: bool = True,
    ) -> subprocess.Popen:
        """Start `argv` inside this host's namespace; stdout+stderr go to `log_path` (appended).

        `env` is added to the current environment. The process gets its own
        session so signals to it never reach the test runner. With `record`
        (default) `restart()` will start it again.
        """
        cmd = Command(
            [str(a) for a in argv],
            dict(env) if env else None,
            str(log_path) if log_path else None,
            str(cwd) if cwd else None,
        )
        if record:
            self.commands.append(cmd)
        return self._start(cmd)

    def _start(self, cmd: Command) -> subprocess.Popen:
        full_env = dict(os.environ)
        full_env.update(cmd.env or {})
        if cmd.log_path:
            Path(cmd.log_path).parent.mkdir(parents=True, exist_ok=True)
            out = open(cmd.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        else:
            out = subprocess.DEVNULL
        try:
            # `ip netns exec` setns()es and then execs argv, so the Popen pid is the program itself.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *cmd.argv],
                env=full_env,
                cwd=cmd.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.procs.append(proc)
        return proc

    def exec(
        self, argv: Sequence[str], timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace and wait for it (output captured)."""
        return _sh(["ip", "netns", "exec", self.netns, *[str(a) for a in argv]], check=check, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process whose network namespace is this host's (what we started and its children)."""
        proc = _sh(["ip", "netns", "pids", self.netns], check=False)
        return [int(p) for p in proc.stdout.split()]

    def can_connect(self, ip: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this host to ip:port completes within `timeout` seconds."""
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({ip!r}, {int(port)}), timeout={float(timeout)}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        try:
            return self.exec([sys.executable, "-c", code], timeout=timeout + 30).returncode == 0
        except subprocess.TimeoutExpired:
            return False


class NetnsCluster:
    """A private bridge plus one namespace per host; use as a context manager or call up()/down()."""

    def __init__(self, names: Iterable[str], prefix: str | None = None, subnet: str | None = None):
        self.names = list(names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"host names must be unique and non-empty: {self.names}")
        if len(self.names) > 200:
            raise ValueError("at most 200 hosts per /24")
        self.prefix = prefix or f"lp{os.getpid():x}-{next(_SEQ)}"
        self.bridge = f"{self.prefix}br"
        if len(f"{self.prefix}v{len(self.names)}") > IFNAMSIZ or len(self.bridge) > IFNAMSIZ:
            raise ValueError(f"prefix {self.prefix!r} too long for interface names")
        self._subnet_hint = subnet
        self.subnet: str | None = subnet  # "10.a.b" (a /24 without the last octet)
        self.hosts: dict[str, Host] = {}
        self._forward_rule: list[str] | None = None
        self._rules: list[tuple[Host, list[str]]] = []

    # ----------------------------------------------------------------- lifecycle
    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> NetnsCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> NetnsCluster:
        """Create bridge, namespaces and veths; on any failure remove what was made and re-raise."""
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _choose_subnet(self) -> str:
        used = _sh(["ip", "-o", "-4", "addr", "show"]).stdout + _sh(["ip", "-4", "route", "show"]).stdout
        digest = int(hashlib.sha256(self.prefix.encode()).hexdigest(), 16)
        # 10.200.0.0-10.249.255.0: 12,800 /24s, picked by hash of the (unique) prefix.
        for k in range(12800):
            n = (digest + k) % 12800
            candidate = f"10.{200 + n // 256}.{n % 256}"
            if f"{candidate}." not in used:
                return candidate
        raise NetnsError("no free 10.x /24 left")

    def _up(self) -> None:
        self.subnet = self._subnet_hint or self._choose_subnet()
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        _sh(["ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])
        if shutil.which("iptables"):
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            _sh(["iptables", "-w", "-I", *rule])
            self._forward_rule = rule
        for i, name in enumerate(self.names):
            netns = f"{self.prefix}-{name}"
            host = Host(name=name, netns=netns, ip=f"{self.subnet}.{10 + i}", veth=f"{self.prefix}v{i}")
            self.hosts[name] = host
            peer = f"{self.prefix}p{i}"
            _sh(["ip", "netns", "add", netns])
            _sh(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
            _sh(["ip", "link", "set", host.veth, "master", self.bridge])
            _sh(["ip", "link", "set", host.veth, "up"])
            _sh(["ip", "link", "set", peer, "netns", netns])
            # Inside, the interface is plainly eth0 and there is no default route:
            # nothing a test starts can send traffic outside this bridge.
            batch = (
                f"link set {peer} name eth0\n"
                f"addr add {host.ip}/24 dev eth0\n"
                "link set eth0 up\n"
                "link set lo up\n"
            )
            subprocess.run(
                ["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True, capture_output=True
            )

    def down(self) -> list[str]:
        """Remove everything this cluster made; keeps going past errors and returns them."""
        errors: list[str] = []
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.kill(host)
        for host in self.hosts.values():
            for argv in (["ip", "netns", "del", host.netns], ["ip", "link", "del", host.veth]):
                proc = _sh(argv, check=False)
                if proc.returncode != 0 and "Cannot find" not in proc.stderr and "No such" not in proc.stderr:
                    errors.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
        proc = _sh(["ip", "link", "del", self.bridge], check=False)
        if proc.returncode != 0 and "Cannot find" not in proc.stderr:
            errors.append(f"ip link del {self.bridge}: {proc.stderr.strip()}")
        if self._forward_rule:
            _sh(["iptables", "-w", "-D", *self._forward_rule], check=False)
            self._forward_rule = None
        self._rules.clear()
        return errors

    # ----------------------------------------------------------------- processes
    def _host(self, host: Host | str) -> Host:
        return self.hosts[host] if isinstance(host, str) else host

    def kill(self, host: Host | str, sig: int = signal.SIGKILL, whole_host: bool = True) -> None:
        """Send `sig` (default SIGKILL) to the host's processes, then reap ours.

        `whole_host` (default): every process in the namespace, as when the
        machine dies. Otherwise only the process groups that `run()` started,
        so children that made their own group (an agent's tasks) live on: a
        crash of the agent process, not of the machine.
        """
        h = self._host(host)
        for proc in h.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
        # Children that left our process groups are still in the namespace.
        for pid in h.pids() if whole_host else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            # SIGKILL is delivered asynchronously: wait (bounded) until the namespace is empty,
            # so callers see a dead host, and teardown never deletes a namespace still in use.
            deadline = time.monotonic() + 10
            while whole_host and (left := h.pids()) and time.monotonic() < deadline:
                for pid in left:  # again: something may have forked meanwhile
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                time.sleep(0.02)
            for proc in h.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            h.procs = [p for p in h.procs if p.poll() is None]

    def stop(self, host: Host | str, grace: float = 5.0, whole_host: bool = True) -> None:
        """SIGTERM the host's processes, wait up to `grace` seconds, then SIGKILL what is left."""
        h = self._host(host)
        self.kill(h, signal.SIGTERM, whole_host=whole_host)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in h.procs):
            time.sleep(0.05)
        self.kill(h, signal.SIGKILL, whole_host=whole_host)

    def restart(
        self, host: Host | str, graceful: bool = False, whole_host: bool = True
    ) -> list[subprocess.Popen]:
        """Kill (or stop, with `graceful`) the host's processes and start its recorded commands again.

        `whole_host=False` restarts only what `run()` started (see `kill`).
        """
        h = self._host(host)
        if graceful:
            self.stop(h, whole_host=whole_host)
        else:
            self.kill(h, whole_host=whole_host)
        return [h._start(cmd) for cmd in h.commands]

    # ----------------------------------------------------------------- faults
    def _group(self, x: Host | str | Iterable[Host | str]) -> list[Host]:
        if isinstance(x, Host | str):
            return [self._host(x)]
        return [self._host(h) for h in x]

    def _drop(self, at: Host, *match: str) -> None:
        rule = ["INPUT", *match, "-j", "DROP"]
        at.exec(["iptables", "-w", "-A", *rule], check=True)
        self._rules.append((at, rule))

    def partition(self, a, b, one_way: bool = False) -> None:
        """Drop packets between hosts (or groups of hosts) `a` and `b`.

        Two-way by default. With `one_way`, only packets from `a` to `b` are
        dropped (b -> a still arrives). Note what that means for TCP: a
        connection needs packets both ways, so neither side can complete a
        handshake; datagrams and the direction of "who hears whom" differ.
        """
        ga, gb = self._group(a), self._group(b)
        for src in ga:
            for dst in gb:
                if src is not dst:
                    self._drop(dst, "-s", src.ip)
                    if not one_way:
                        self._drop(src, "-s", dst.ip)

    def isolate(self, host: Host | str) -> None:
        """Cut `host` off from every other host and from the bridge address (loopback keeps working)."""
        h = self._host(host)
        self._drop(h, "-i", "eth0")
        for other in self.hosts.values():
            if other is not h:
                self._drop(other, "-s", h.ip)

    def heal(self) -> None:
        """Remove every partition/isolation rule."""
        for host in self.hosts.values():
            host.exec(["iptables", "-w", "-F", "INPUT"], check=True)
        self._rules.clear()

    @property
    def rules(self) -> list[tuple[str, list[str]]]:
        """The DROP rules in force, as (host name, iptables rule) pairs."""
        return [(h.name, list(r)) for h, r in self._rules]

    # ----------------------------------------------------------------- persistence (deploy script)
    def to_state(self) -> dict:
        """What `from_state` needs to find and tear down this cluster from another process."""
        return {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "bridge": self.bridge,
            "forward_rule": self._forward_rule,
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "ip": h.ip,
                    "veth": h.veth,
                    "commands": [c.__dict__ for c in h.commands],
                }
                for h in self.hosts.values()
            ],
        }

    @classmethod
    def from_state(cls, state: dict) -> NetnsCluster:
        cluster = cls([h["name"] for h in state["hosts"]], prefix=state["prefix"], subnet=state["subnet"])
        cluster._forward_rule = state.get("forward_rule")
        for h in state["hosts"]:
            cluster.hosts[h["name"]] = Host(
                name=h["name"],
                netns=h["netns"],
                ip=h["ip"],
                veth=h["veth"],
                commands=[Command(**c) for c in h.get("commands", [])],
            )
        return cluster

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_state(), indent=2))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gc_stale() -> list[str]:
    """Remove namespaces/links of *test* clusters whose owning process is gone; return what went.

    Only names matching `lp<pid hex>-...` whose pid is dead are touched, so a
    concurrent run (live pid) or a cluster from deploy/ (other prefix) is safe.
    """
    removed = []
    for line in _sh(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _TEST_PREFIX_RE.match(name)
        if m and not _pid_alive(int(m.group(1), 16)):
            for pid in _sh(["ip", "netns", "pids", name], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for line in _sh(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _TEST_PREFIX_RE.match(name)
        if m and not _pid_alive(int(m.group(1), 16)):
            if name.endswith("br"):
                _sh(["iptables", "-w", "-D", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT"], check=False)
            _sh(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed
