"""The namespace test cluster itself, exercised with plain processes (no Lepton needed).

Each test starts `python -m http.server` (or a tiny UDP listener) inside
namespaces and checks who can reach whom before and after kill/restart,
partitions and isolation. Waits are polls with generous deadlines; the only
negative checks are connection attempts with a short timeout against a
server that was reachable a moment before.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support_netns.netns import NetnsCluster, _sh, netns_supported

pytestmark = pytest.mark.netns
# Fixtures (netns_cluster) come from this plugin module rather than a conftest we do not own.
pytest_plugins = ["tests.support_netns.fixtures"]

PORT = 8000


def serve(host, tmp_path):
    """Start an HTTP server on host's address and wait until the bridge can reach it."""
    host.run(
        [sys.executable, "-m", "http.server", str(PORT), "--bind", host.ip],
        log_path=tmp_path / f"{host.name}-http.log",
        cwd=tmp_path,
    )
    assert wait_reachable(host.ip), f"http.server on {host.name} never came up"


def wait_reachable(ip: str, deadline_s: float = 20.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(f"http://{ip}:{PORT}/", timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def names_with(prefix: str) -> list[str]:
    netns = _sh(["ip", "netns", "list"]).stdout
    links = _sh(["ip", "-o", "link", "show"]).stdout
    fwd = _sh(["iptables", "-w", "-S", "FORWARD"]).stdout
    return [line for line in (netns + links + fwd).splitlines() if prefix in line]


def test_every_host_reaches_every_other(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b", "c"])
    for host in net.hosts.values():
        serve(host, tmp_path)
    for src in net.hosts.values():
        for dst in net.hosts.values():
            assert src.can_connect(dst.ip, PORT), f"{src.name} -> {dst.name}"
    # A real HTTP exchange from inside a namespace, not only a handshake.
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{net['b'].ip}:{PORT}/').status)"
    out = net["a"].exec([sys.executable, "-c", fetch], check=True)
    assert out.stdout.strip() == "200"
    # Hosts have no default route: nothing started inside can reach beyond the bridge.
    assert "default" not in net["a"].exec(["ip", "route"]).stdout


def test_partition_two_way_then_heal(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b", "c"])
    for host in net.hosts.values():
        serve(host, tmp_path)
    a, b, c = net["a"], net["b"], net["c"]
    net.partition("a", "b")
    assert not a.can_connect(b.ip, PORT, timeout=0.5)
    assert not b.can_connect(a.ip, PORT, timeout=0.5)
    assert a.can_connect(c.ip, PORT) and b.can_connect(c.ip, PORT) and c.can_connect(a.ip, PORT)
    net.heal()
    assert a.can_connect(b.ip, PORT) and b.can_connect(a.ip, PORT)
    assert net.rules == []


def test_partition_groups(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b", "c", "d"])
    for host in net.hosts.values():
        serve(host, tmp_path)
    net.partition(["a"], ["b", "c", "d"])  # a minority of one
    assert not any(net["a"].can_connect(net[x].ip, PORT, timeout=0.5) for x in "bcd")
    assert net["b"].can_connect(net["c"].ip, PORT) and net["d"].can_connect(net["b"].ip, PORT)


UDP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9000))
while True:
    data, _ = s.recvfrom(100)
    with open(sys.argv[2], "ab") as f:
        f.write(data + b"\\n")
"""


def send_udp(src, dst_ip: str, payload: str) -> None:
    code = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto({payload!r}.encode(), ({dst_ip!r}, 9000))"
    src.exec([sys.executable, "-c", code], check=True)


def test_partition_one_way(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b"])
    a, b = net["a"], net["b"]
    serve(b, tmp_path)
    inbox = tmp_path / "a-inbox"
    a.run([sys.executable, "-c", UDP_LISTENER, a.ip, inbox], log_path=tmp_path / "a-udp.log")
    net.partition("a", "b", one_way=True)  # a's packets never reach b
    assert not a.can_connect(b.ip, PORT, timeout=0.5)
    # ... and the DROP rule at b is what ate them.
    counters = b.exec(["iptables", "-w", "-L", "INPUT", "-v", "-n", "-x"], check=True).stdout
    drop = next(line for line in counters.splitlines() if "DROP" in line)
    assert int(drop.split()[0]) > 0, counters
    # b -> a still flows: datagrams from b arrive (resend until the listener is up and logs one).
    end = time.monotonic() + 20
    while time.monotonic() < end and not (inbox.exists() and b"from-b" in inbox.read_bytes()):
        send_udp(b, a.ip, "from-b")
        time.sleep(0.2)
    assert inbox.exists() and b"from-b" in inbox.read_bytes()
    net.heal()
    assert a.can_connect(b.ip, PORT)


def test_isolate_then_heal(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b", "c"])
    for host in net.hosts.values():
        serve(host, tmp_path)
    net.isolate("b")
    assert not net["a"].can_connect(net["b"].ip, PORT, timeout=0.5)
    assert not net["b"].can_connect(net["c"].ip, PORT, timeout=0.5)
    assert not wait_reachable(net["b"].ip, deadline_s=1)  # from the bridge (test process) too
    assert net["a"].can_connect(net["c"].ip, PORT)
    assert net["b"].can_connect(net["b"].ip, PORT)  # traffic within the host still flows
    net.heal()
    assert net["a"].can_connect(net["b"].ip, PORT) and net["b"].can_connect(net["c"].ip, PORT)


def test_kill_and_restart(netns_cluster, tmp_path):
    net = netns_cluster(["a", "b"])
    b = net["b"]
    serve(b, tmp_path)
    # A grandchild in its own session: kill() must find it through the namespace, not our Popen.
    b.run(["sh", "-c", "setsid sleep 600 & wait"], record=False)
    end = time.monotonic() + 10
    while time.monotonic() < end and len(b.pids()) < 3:
        time.sleep(0.05)
    assert len(b.pids()) >= 3
    net.kill("b")
    assert b.pids() == []
    assert not net["a"].can_connect(b.ip, PORT, timeout=0.5)
    net.restart("b")  # re-runs the recorded http.server, not the unrecorded sleeper
    assert wait_reachable(b.ip)
    assert len(b.commands) == 1


def test_process_crash_keeps_detached_children(netns_cluster, tmp_path):
    net = netns_cluster(["a"])
    a = net["a"]
    # Like an agent whose tasks run in their own sessions: the parent dies, the child must not.
    pidfile = tmp_path / "child.pid"
    a.run(["sh", "-c", f"setsid sleep 600 & echo $! > {pidfile}; wait"])
    end = time.monotonic() + 10
    while time.monotonic() < end and not (pidfile.exists() and pidfile.read_text().strip()):
        time.sleep(0.05)
    child = int(pidfile.read_text())
    net.kill("a", whole_host=False)
    assert child in a.pids()
    net.restart("a", whole_host=False)
    assert child in a.pids() and len(a.procs) == 1
    net.kill("a")  # the machine dies: everything goes
    assert a.pids() == []


def test_teardown_removes_everything_even_when_the_body_fails(tmp_path):
    if reason := netns_supported():
        pytest.skip(reason)
    cluster = NetnsCluster(["a", "b"])
    with pytest.raises(RuntimeError, match="boom"), cluster:
        cluster["a"].run([sys.executable, "-m", "http.server", str(PORT), "--bind", cluster["a"].ip])
        cluster.partition("a", "b")
        assert names_with(cluster.prefix)
        raise RuntimeError("boom")
    assert names_with(cluster.prefix) == []
    assert all(p.poll() is not None for p in cluster["a"].procs) or cluster["a"].procs == []


def test_up_failure_cleans_up(tmp_path):
    if reason := netns_supported():
        pytest.skip(reason)
    # A veth named like an existing interface makes the second host fail half-way through up().
    cluster = NetnsCluster(["a", "b"])
    _sh(["ip", "link", "add", f"{cluster.prefix}v1", "type", "bridge"])
    try:
        with pytest.raises(Exception, match="File exists|exists"):
            cluster.up()
        leftovers = [n for n in names_with(cluster.prefix) if f"{cluster.prefix}v1" not in n]
        assert leftovers == []
    finally:
        subprocess.run(["ip", "link", "del", f"{cluster.prefix}v1"], capture_output=True)


def test_gc_removes_only_clusters_of_dead_runs(netns_cluster):
    from tests.support_netns.netns import _pid_alive, gc_stale

    live = netns_cluster(["a"])  # ours: the pid in its prefix is alive
    dead_pid = next(p for p in range(0x3FFFFF, 0x300000, -1) if not _pid_alive(p))
    stale = NetnsCluster(["a", "b"], prefix=f"lp{dead_pid:x}-1")
    try:
        stale.up()  # and then "forgotten", as by a run killed before its teardown
        stale["a"].run(["sleep", "600"], record=False)
        removed = gc_stale()
        assert stale["a"].netns in removed and stale.bridge in removed
        assert names_with(stale.prefix) == []
        assert names_with(live.prefix)  # a live run's cluster is untouched
    finally:
        stale.down()
