"""The deterministic fault simulator: 3-5 RaftCores in one process under a seeded scheduler.

Each step the scheduler (random.Random(seed)) picks one event: deliver a
random in-flight message (so delivery order is arbitrary: reordering and
delay come for free), tick a node, run a node's driver (persist -> send ->
apply -> advance), propose, read, compact, change membership, transfer
leadership, crash or restart a node, or change the partition. The network
drops and duplicates messages. A crash keeps only what the driver persisted.
After every step the Checker asserts Raft's safety properties; at the end
the faults stop and a leader must commit a new proposal on every live member
within a bounded number of ticks.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from controller.raft.core import ProposalDropped
from controller.raft.types import ConfChange, ConfChangeType, EntryType, Message, MsgType, Role
from lepton.errors import NotLeader

from .checker import Checker, SafetyViolation
from .node import SimNode


@dataclass(slots=True)
class SimConfig:
    nodes: int = 3
    steps: int = 2000
    drop: float = 0.05  # probability a sent message is lost
    dup: float = 0.02  # probability a sent message is delivered twice
    p_drive_now: float = 0.85  # the driver usually runs right after a node changes
    p_split_ready: float = 0.1  # a persisted Ready is sent/applied/advanced only at a later drive
    compact_every: int = 20  # a node compacts when this many entries are applied past its snapshot
    liveness_ticks: int = 400
    trace_len: int = 40
    trace: bool = False  # print every event as it happens


class SimFailure(AssertionError):
    def __init__(self, seed: int, check: str, detail: str, trace: list[str]) -> None:
        self.seed, self.check, self.detail, self.trace = seed, check, detail, trace
        lines = "\n  ".join(trace)
        super().__init__(
            f"seed {seed}: {check}: {detail}\n  last events:\n  {lines}\n"
            f"replay: python -m tests.raft_sim --seed {seed} --trace"
        )


def _fmt_msg(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MsgType.APP, MsgType.VOTE, MsgType.PRE_VOTE):
        s += f" idx={m.index} lt={m.log_term}"
    if m.entries:
        s += f" ents={m.entries[0].index}..{m.entries[-1].index}"
    if m.type in (MsgType.APP, MsgType.HEARTBEAT):
        s += f" commit={m.commit}"
    if m.type == MsgType.APP_RESP:
        s += f" idx={m.index}" + (f" REJ hint={m.reject_hint}/{m.hint_term}" if m.reject else "")
    elif m.reject:
        s += " REJ"
    if m.snapshot is not None:
        s += f" snap@{m.snapshot.meta.index}"
    return s


class Simulation:
    def __init__(self, seed: int, cfg: SimConfig) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        # The cores' timeout jitter has its own stream so that scheduling
        # choices and core decisions do not perturb each other.
        self.core_rng = random.Random(seed * 7919 + 1)
        ids = tuple(f"n{i}" for i in range(1, cfg.nodes + 1))
        # Small batches and windows expose orderings that big ones hide (e.g.
        # Figure 8 needs a follower holding an old-term entry without the
        # new leader's no-op after it); the flags are varied too.
        r = self.rng
        self.opts = dict(
            rand=self.core_rng,
            election_ticks=10,
            heartbeat_ticks=r.choice((1, 2, 3)),
            max_msg_entries=r.choice((1, 1, 2, 3, 64)),
            max_inflight=r.choice((1, 2, 4, 256)),
            # From its own stream, so that adding it left every other choice of
            # every seed as it was (regression seeds keep their scenarios).
            max_msg_bytes=random.Random(seed * 31 + 7).choice((0, 10, 1 << 20)),
            pre_vote=r.random() < 0.8,
            check_quorum=r.random() < 0.8,
        )
        self.nodes: dict[str, SimNode] = {i: SimNode(i, ids, self.opts) for i in ids}
        self.next_id = cfg.nodes + 1
        self.net: list[Message] = []
        self.blocked: set[tuple[str, str]] = set()  # (from, to) pairs that drop everything
        self.check = Checker()
        self.events: deque = deque(maxlen=cfg.trace_len)
        self.step_no = 0
        self.conf_done: set[int] = set()
        self.proposals = 0
        self.reads = 0
        self.stats = dict.fromkeys(
            (
                "delivered",
                "dropped",
                "crashes",
                "snapshots_sent",
                "snapshots_installed",
                "conf_changes",
                "transfers",
                "reads_served",
                "compactions",
            ),
            0,
        )

    # -- tracing ------------------------------------------------------------------

    def log(self, kind: str, detail) -> None:
        ev = (self.step_no, kind, detail)
        self.events.append(ev)
        if self.cfg.trace:
            print(self._fmt(ev))

    @staticmethod
    def _fmt(ev) -> str:
        step, kind, detail = ev
        if isinstance(detail, Message):
            detail = _fmt_msg(detail)
        return f"[{step}] {kind} {detail}"

    def fail(self, check: str, detail: str) -> SimFailure:
        return SimFailure(self.seed, check, detail, [self._fmt(e) for e in self.events])

    # -- the driver -----------------------------------------------------------------

    def drive(self, node: SimNode, crash_after_persist: bool = False) -> None:
        core = node.core
        chk = self.check
        rd = node.inflight
        if rd is None:
            if not core.has_ready():
                return
            rd = core.ready()
            node.storage.persist(rd)
            if rd.entries:
                chk.persisted(node.id, rd.entries)
            if crash_after_persist:
                self.log("crash-after-fsync", node.id)
                self.crash(node)
                return
            if self.rng.random() < self.cfg.p_split_ready:
                # An asynchronous driver: messages and ticks reach the core
                # between ready() and advance(); the batch finishes at a later drive.
                node.inflight = rd
                return
        else:
            node.inflight = None
        blocked, net, rng, drop, dup = self.blocked, self.net, self.rng, self.cfg.drop, self.cfg.dup
        for m in rd.messages:
            if m.type == MsgType.SNAP:
                self.stats["snapshots_sent"] += 1
                ok = (m.frm, m.to) not in blocked and rng.random() >= drop
                if ok:
                    net.append(m)
                # The transport reports how the (chunked) snapshot stream went.
                net.append(Message(MsgType.SNAP_STATUS, m.to, m.frm, reject=not ok))
                continue
            if (m.frm, m.to) in blocked or rng.random() < drop:
                self.stats["dropped"] += 1
                continue
            net.append(m)
            if rng.random() < dup:
                net.append(m)
        if rd.snapshot is not None:
            if rd.snapshot.meta.index > 1:
                self.stats["snapshots_installed"] += 1
            node.install(rd.snapshot)
            chk.installed(node.id, node.applied, node.digest)
        for e in rd.committed_entries:
            node.apply(e)
            chk.applied_entry(node.id, e, node.digest)
            if e.type == EntryType.CONF_CHANGE and e.index not in self.conf_done:
                # Act once per entry: a lagging replica applying an old removal
                # must not stop a node that has been re-added since.
                self.conf_done.add(e.index)
                self.conf_applied(e.data)
        for rs in rd.read_states:
            chk.read_served(node.id, rs.context, rs.index)
            self.stats["reads_served"] += 1
        core.advance(rd)
        if core.role == Role.LEADER:
            chk.leader_seen(node.id, core.term, core.log)

    def after(self, node: SimNode) -> None:
        """Runs the node's driver now, or leaves the Ready for a later drive event."""
        core = node.core
        if core.role == Role.LEADER:
            # Checked before the driver runs: a leader may step down within one batch.
            self.check.leader_seen(node.id, core.term, core.log)
        if self.rng.random() < self.cfg.p_drive_now:
            self.drive(node)

    def conf_applied(self, data: bytes) -> None:
        cc = ConfChange.decode(data)
        if cc.type == ConfChangeType.REMOVE:
            n = self.nodes.get(cc.node_id)
            if n is not None and not n.removed:
                # The operator shuts a removed member down once its removal commits.
                n.removed = True
                if n.alive:
                    self.log("stop-removed", n.id)
                    self.crash(n)

    # -- faults -------------------------------------------------------------------

    def crash(self, node: SimNode) -> None:
        node.crash()
        self.stats["crashes"] += 1

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            if n.alive and n.core.role == Role.LEADER and (best is None or n.core.term > best.core.term):
                best = n
        return best

    def new_partition(self) -> None:
        ids = [n for n in self.nodes if not self.nodes[n].removed]
        rng = self.rng
        self.blocked = set()
        if rng.random() < 0.5:
            # Symmetric: split into two sides.
            side = {i for i in ids if rng.random() < 0.5}
            for a in ids:
                for b in ids:
                    if (a in side) != (b in side):
                        self.blocked.add((a, b))
            self.log("partition", f"{sorted(side)} | {sorted(set(ids) - side)}")
        else:
            # Asymmetric: a few one-way link failures.
            for _ in range(rng.randint(1, 3)):
                a, b = rng.sample(ids, 2) if len(ids) >= 2 else (ids[0], ids[0])
                self.blocked.add((a, b))
            self.log("one-way", sorted(self.blocked))

    # -- one step -------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.step_no += 1
        r = rng.random()
        nodes = self.nodes
        if r < 0.5 and self.net:
            net = self.net
            i = rng.randrange(len(net))
            net[i], net[-1] = net[-1], net[i]
            m = net.pop()
            n = nodes.get(m.to)
            if n is None or not n.alive:
                return
            # A partition that started after the send still eats it.
            if (m.frm, m.to) in self.blocked and m.type != MsgType.SNAP_STATUS:
                return
            self.log("deliver", m)
            self.stats["delivered"] += 1
            n.core.step(m)
            self.after(n)
        elif r < 0.78:
            n = nodes[rng.choice(list(nodes))]
            if n.alive:
                n.core.tick()
                self.after(n)
        elif r < 0.86:
            n = nodes[rng.choice(list(nodes))]
            if n.alive:
                self.drive(n, crash_after_persist=rng.random() < 0.01)
        elif r < 0.98:
            self.client_op()
        else:
            self.fault()

    def client_op(self) -> None:
        rng = self.rng
        ld = self.leader()
        r = rng.random()
        if r < 0.7:
            target = ld if (ld is not None and rng.random() < 0.9) else self.random_live()
            if target is None:
                return
            self.proposals += 1
            data = b"p%d" % self.proposals
            try:
                idx = target.core.propose(data)
                self.log("propose", f"{target.id} {data!r} -> {idx}")
            except (NotLeader, ProposalDropped):
                return
            self.after(target)
        elif r < 0.85:
            target = self.random_live()
            if target is None:
                return
            self.reads += 1
            ctx = b"r%d" % self.reads
            self.check.read_requested(ctx)
            try:
                target.core.read_index(ctx)
                self.log("read_index", f"{target.id} {ctx!r}")
            except NotLeader:
                return
            self.after(target)
        else:
            # Compaction: a node snapshots its state machine at its applied index.
            n = self.random_live()
            if n is None:
                return
            c = n.core
            if c.applied - c.log.snap_index >= self.cfg.compact_every and n.applied == c.applied:
                snap = c.compact(c.applied, n.sm_snapshot())
                n.storage.save_snapshot(snap)
                self.stats["compactions"] += 1
                self.log("compact", f"{n.id} @{c.applied}")

    def random_live(self) -> SimNode | None:
        live = self.live()
        return self.rng.choice(live) if live else None

    def fault(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            live = self.live()
            if len(live) > 1:
                n = rng.choice(live)
                self.log("crash", n.id)
                self.crash(n)
        elif r < 0.5:
            dead = [n for n in self.nodes.values() if not n.alive and not n.removed]
            if dead:
                n = rng.choice(dead)
                n.restart()
                self.log("restart", n.id)
                self.after(n)
        elif r < 0.7:
            self.new_partition()
        elif r < 0.8:
            self.blocked = set()
            self.log("heal", "")
        elif r < 0.93:
            self.conf_change()
        else:
            ld = self.leader()
            if ld is not None:
                to = rng.choice(ld.core.voters)
                ld.core.transfer_leadership(to)
                self.stats["transfers"] += 1
                self.log("transfer", f"{ld.id} -> {to}")
                self.after(ld)

    def conf_change(self) -> None:
        rng = self.rng
        ld = self.leader()
        if ld is None:
            return
        voters = ld.core.voters
        members = [n for n in self.nodes.values() if not n.removed]
        if len(voters) > 2 and (len(voters) > self.cfg.nodes or rng.random() < 0.5):
            cc = ConfChange(ConfChangeType.REMOVE, rng.choice(voters))
            new_node = None
        else:
            # A removed machine may come back with its old disk (same id) or
            # wiped under a new id; a node id is never reused with empty state
            # (it could vote twice in a term it already voted in).
            back = [n for n in self.nodes.values() if n.removed and n.id not in voters]
            new_node = rng.choice(back) if back and rng.random() < 0.5 else None
            nid = new_node.id if new_node is not None else f"n{self.next_id}"
            if nid in voters or len(members) >= self.cfg.nodes + 2:
                return
            cc = ConfChange(ConfChangeType.ADD, nid)
        try:
            idx = ld.core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped):
            return
        except Exception as e:  # ConfChangePending / InvalidArgument
            self.log("conf-refused", f"{cc.type.name} {cc.node_id}: {type(e).__name__}")
            return
        self.stats["conf_changes"] += 1
        self.log("conf-change", f"{ld.id} {cc.type.name} {cc.node_id} @{idx}")
        if cc.type == ConfChangeType.ADD:
            if new_node is not None:
                new_node.removed = False
                new_node.restart()
                self.log("re-add-with-disk", new_node.id)
            else:
                self.next_id += 1
                self.nodes[cc.node_id] = SimNode(cc.node_id, (), self.opts)
                self.log("start-new", cc.node_id)
        self.after(ld)

    # -- checks ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            for _ in range(self.cfg.steps):
                self.step()
                if self.step_no % 200 == 0:
                    self.check.logs_match([n.core for n in self.live()])
            self.check.logs_match([n.core for n in self.live()])
            self.liveness()
            self.stats["committed"] = self.check.max_committed
            self.stats["leader_terms"] = len(self.check.leaders)
        except SafetyViolation as e:
            raise self.fail(e.check, e.detail) from None
        except SimFailure:
            raise
        except AssertionError as e:
            raise self.fail("core assertion", str(e)) from e
        except Exception as e:  # a crash in the core (or the simulator) is a finding too
            raise self.fail("exception", repr(e)) from e

    def settle(self) -> None:
        """Reliable, in-order delivery until the network is empty."""
        for n in self.live():
            if n.alive:  # driving one node may stop another (its removal committed)
                self.drive(n)
        budget = 50_000  # a message storm that never ends is itself a liveness bug
        while self.net:
            net, self.net = self.net, []
            budget -= len(net)
            if budget < 0:
                raise self.fail("liveness", "the network never quiesces (message storm)")
            for m in net:
                n = self.nodes.get(m.to)
                if n is not None and n.alive:
                    self.log("deliver", m)
                    n.core.step(m)
                    self.after_reliable(n)

    def after_reliable(self, n: SimNode) -> None:
        if n.core.role == Role.LEADER:
            self.check.leader_seen(n.id, n.core.term, n.core.log)
        self.drive(n)

    def liveness(self) -> None:
        """Faults stop: a leader must emerge and commit a proposal on every live member."""
        cfg = self.cfg
        cfg.drop = cfg.dup = cfg.p_split_ready = 0.0
        self.blocked = set()
        self.log("faults-stop", "")
        for n in self.nodes.values():
            if not n.alive and not n.removed:
                n.restart()
        target = None
        for tick in range(cfg.liveness_ticks):
            self.step_no += 1
            self.settle()
            ld = self.leader()
            if ld is not None and target is None and ld.core.lead_transferee == "":
                try:
                    target = (ld.id, ld.core.propose(b"final"))
                    self.settle()
                except (NotLeader, ProposalDropped):
                    pass
            ld = self.leader()  # settling may have stopped a leader whose removal committed
            if target is not None and ld is not None:
                idx = self.committed_everywhere(ld)
                if idx is not None:
                    self.stats["liveness_ticks"] = tick
                    return
            for n in self.live():
                n.core.tick()
            for n in self.live():
                if n.alive:
                    self.drive(n)
        states = "; ".join(repr(n.core) for n in self.live())
        raise self.fail(
            "liveness", f"no proposal committed on all members within {cfg.liveness_ticks} ticks: {states}"
        )

    def committed_everywhere(self, ld: SimNode) -> int | None:
        # The proposal may have been lost with a leader change: look for "final"
        # in the current leader's log, re-proposing if needed.
        log = ld.core.log
        idx = None
        for e in log.entries:
            if e.data == b"final" and e.type == EntryType.NORMAL:
                idx = e.index
        if idx is None:
            if ld.core.lead_transferee == "":
                try:
                    ld.core.propose(b"final")
                except (NotLeader, ProposalDropped):
                    pass
            return None
        for vid in ld.core.voters:
            n = self.nodes.get(vid)
            if n is None or not n.alive or n.applied < idx:
                return None
        return idx


def run_seed(seed: int, cfg: SimConfig | None = None) -> Simulation:
    sim = Simulation(seed, cfg or SimConfig())
    sim.run()
    return sim
