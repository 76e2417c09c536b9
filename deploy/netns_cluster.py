#!/usr/bin/env python3
"""Play with a multi-host Lepton cluster on one Linux machine: one network namespace per host.

    sudo deploy/netns_cluster.py up --controllers 3 --agents 3     # start, wait for a leader
    sudo deploy/netns_cluster.py status                            # who leads, what runs where
    sudo deploy/netns_cluster.py kill c1 | restart c1              # SIGKILL / start again a host
    sudo deploy/netns_cluster.py partition c1 c2 [--one-way]       # drop packets between hosts
    sudo deploy/netns_cluster.py isolate c1 | heal                 # cut one host off / undo all
    sudo deploy/netns_cluster.py down                              # remove everything
    sudo deploy/netns_cluster.py gc                                # sweep leftovers of killed test runs

It is the same machinery the tests use (tests/support_netns), so it runs from
a source checkout. The processes outlive this script; what `down` needs to
find them again (namespaces, bridge, commands) is kept in
/var/tmp/lepton-netns/<name>/state.json next to every host's log and data.
Several clusters can coexist under different `--name`s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support_netns.lepton import LeptonOnNetns, lepton_missing  # noqa: E402
from tests.support_netns.netns import NetnsCluster, ensure_tools, gc_stale, netns_supported  # noqa: E402

STATE_ROOT = Path("/var/tmp/lepton-netns")


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def load(name: str) -> tuple[NetnsCluster, dict]:
    path = state_dir(name) / "state.json"
    if not path.exists():
        sys.exit(f"no cluster named {name!r} (no {path}); start one with: up --name {name}")
    state = json.loads(path.read_text())
    return NetnsCluster.from_state(state["net"]), state


def lepton_view(net: NetnsCluster, state: dict) -> LeptonOnNetns:
    return LeptonOnNetns(net, state["controllers"], state["agents"], state_dir(state["name"]))


def cmd_up(args) -> int:
    ensure_tools()
    if reason := netns_supported():
        sys.exit(f"cannot build namespaces here: {reason}")
    if reason := lepton_missing():
        sys.exit(f"Lepton programs missing: {reason}")
    if len(args.name) > 8 or not args.name.isalnum():
        sys.exit("--name: at most 8 letters/digits (it becomes part of interface names)")
    sdir = state_dir(args.name)
    if (sdir / "state.json").exists():
        sys.exit(f"cluster {args.name!r} already exists; run: down --name {args.name}")
    sdir.mkdir(parents=True, exist_ok=True)
    controllers = [f"c{i + 1}" for i in range(args.controllers)]
    agents = [f"n{i + 1}" for i in range(args.agents)]
    started = time.monotonic()
    net = NetnsCluster(controllers + agents, prefix=f"ld{args.name}").up()
    state = {"name": args.name, "controllers": controllers, "agents": agents}
    try:
        lep = lepton_view(net, state)
        for c in controllers:
            lep.start_controller(c)
        for a in agents:
            lep.start_agent(a, cpus=args.agent_cpus, memory=args.agent_memory, network=args.agent_network)
    finally:
        # Saved even if a start failed, so that `down` can always clean up.
        state["net"] = net.to_state()
        (sdir / "state.json").write_text(json.dumps(state, indent=2))
    leader = lep.find_leader(timeout=args.wait)
    took = time.monotonic() - started
    if not leader:
        print(lep.logs(), file=sys.stderr)
        print(f"no leader after {took:.1f}s; the cluster is left up for inspection (down to remove)")
        return 1
    addrs = ",".join(lep.api_addresses)
    print(
        f"cluster {args.name!r} up in {took:.1f}s: leader {leader}, subnet {net.subnet}.0/24, bridge {net.bridge}"
    )
    for h in net.hosts.values():
        role = "controller" if h.name in controllers else "agent"
        print(f"  {h.name:4} {role:10} {h.ip:15} netns {h.netns}")
    print(f"\n  export LEPTON_CONTROLLERS={addrs}")
    print("  lepton-ctl cluster status")
    print("  lepton-ctl jobs submit examples/worked-example.yaml")
    print(f"  ip netns exec {net['c1'].netns} bash       # a shell 'on' c1")
    print(f"  logs and data: {sdir}/<host>/")
    return 0


def cmd_down(args) -> int:
    path = state_dir(args.name) / "state.json"
    if not path.exists():
        print(f"no cluster named {args.name!r}")
        return 0
    net, _ = load(args.name)
    errors = net.down()
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    if args.keep_logs:
        path.unlink()
    else:
        shutil.rmtree(state_dir(args.name), ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()  # only when no other cluster is left
    print(f"cluster {args.name!r} removed")
    return 1 if errors else 0


def cmd_status(args) -> int:
    net, state = load(args.name)
    lep = lepton_view(net, state)
    for h in net.hosts.values():
        pids = h.pids()
        line = f"{h.name:4} {h.ip:15} {'up' if pids else 'DOWN':4} pids={pids}"
        if h.name in state["controllers"]:
            st = lep.cluster_status(h.name, timeout=1.0)
            line += (
                f"  leader={st.leader_id or '-'} term={st.term} applied={st.applied_index}"
                if st
                else "  (no answer)"
            )
        print(line)
        # Rules live in the namespaces, not in this process: ask iptables.
        for rule in h.exec(["iptables", "-w", "-S", "INPUT"]).stdout.splitlines():
            if "DROP" in rule:
                print(f"     fault: {rule}")
    return 0


def with_net(fn):
    def run(args) -> int:
        net, _ = load(args.name)
        fn(net, args)
        return 0

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netns_cluster.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="demo", help="cluster name (default demo; several may coexist)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create namespaces and start controllers + agents")
    up.add_argument("--controllers", type=int, default=3)
    up.add_argument("--agents", type=int, default=3)
    up.add_argument("--agent-cpus", default="100", help="per agent (default 100: the worked example's node)")
    up.add_argument("--agent-memory", default="1Ti")
    up.add_argument("--agent-network", default="10G")
    up.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a leader")
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="kill everything and remove namespaces, bridge, rules")
    down.add_argument("--keep-logs", action="store_true")
    down.set_defaults(fn=cmd_down)
    sub.add_parser("status", help="hosts, processes, leader").set_defaults(fn=cmd_status)
    for verb, helptext in (
        ("kill", "SIGKILL every process on HOST"),
        ("restart", "kill HOST, start it again"),
    ):
        sp = sub.add_parser(verb, help=helptext)
        sp.add_argument("host")
        sp.set_defaults(fn=with_net(lambda net, a, verb=verb: getattr(net, verb)(a.host)))
    part = sub.add_parser("partition", help="drop packets between A and B (comma lists allowed)")
    part.add_argument("a")
    part.add_argument("b")
    part.add_argument("--one-way", action="store_true", help="only A -> B is dropped")
    part.set_defaults(
        fn=with_net(lambda net, a: net.partition(a.a.split(","), a.b.split(","), one_way=a.one_way))
    )
    iso = sub.add_parser("isolate", help="cut HOST off from everyone")
    iso.add_argument("host")
    iso.set_defaults(fn=with_net(lambda net, a: net.isolate(a.host)))
    sub.add_parser("heal", help="remove every partition").set_defaults(fn=with_net(lambda net, a: net.heal()))
    sub.add_parser("gc", help="remove leftovers of killed test runs").set_defaults(
        fn=lambda a: print("\n".join(gc_stale()) or "nothing to remove") or 0
    )
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
