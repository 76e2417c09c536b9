"""Table-driven unit tests of the pure Raft core: elections, pre-vote, check-quorum, commit rule,
backtracking, snapshots, leadership transfer, membership changes and read index."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.raft.core import ConfChangePending, ProposalDropped, RaftCore
from controller.raft.progress import ProgressState
from controller.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from lepton.errors import InvalidArgument, NotLeader

BOOT = Snapshot(SnapshotMeta(1, 1, ConfState(("n1", "n2", "n3"))))


def boot(ids: tuple[str, ...]) -> Snapshot:
    return Snapshot(SnapshotMeta(1, 1, ConfState(ids)))


def core(node_id: str, voters=("n1", "n2", "n3"), **kw) -> RaftCore:
    # Deterministic, distinct timeouts (n1: election_ticks, n2: +1, ...), so
    # nodes ticked together do not split votes forever; a test decides who
    # campaigns by ticking that node alone.
    offset = int(node_id[1:]) - 1
    kw.setdefault("rand", lambda lo, hi: lo + offset % (hi - lo))
    return RaftCore(node_id, voters, **kw)


class Net:
    """Synchronous, in-order delivery among cores, with cuttable links and a message filter."""

    def __init__(self, cores: list[RaftCore]) -> None:
        self.cores = {c.id: c for c in cores}
        self.cut: set[tuple[str, str]] = set()
        self.drop: Callable[[Message], bool] = lambda m: False
        self.sent: list[Message] = []
        self.read_states: dict[str, list[ReadState]] = {c.id: [] for c in cores}
        self.applied: dict[str, list[Entry]] = {c.id: [] for c in cores}

    def add(self, c: RaftCore) -> None:
        self.cores[c.id] = c
        self.read_states[c.id] = []
        self.applied[c.id] = []

    def isolate(self, nid: str) -> None:
        for o in self.cores:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def heal(self) -> None:
        self.cut = set()

    def flush(self, c: RaftCore) -> list[Message]:
        out = []
        while c.has_ready():
            rd = c.ready()
            out += rd.messages
            self.read_states[c.id] += rd.read_states
            self.applied[c.id] += rd.committed_entries
            c.advance(rd)
        return out

    def run(self) -> None:
        queue = [m for c in self.cores.values() for m in self.flush(c)]
        while queue:
            m = queue.pop(0)
            self.sent.append(m)
            if (m.frm, m.to) in self.cut or self.drop(m) or m.to not in self.cores:
                if m.type == MsgType.SNAP:
                    self.cores[m.frm].step(Message(MsgType.SNAP_STATUS, m.to, m.frm, reject=True))
                    queue += self.flush(self.cores[m.frm])
                continue
            dst = self.cores[m.to]
            dst.step(m)
            queue += self.flush(dst)
            if m.type == MsgType.SNAP:
                src = self.cores[m.frm]
                src.step(Message(MsgType.SNAP_STATUS, m.to, m.frm))
                queue += self.flush(src)

    def tick(self, nid: str, n: int = 1) -> None:
        for _ in range(n):
            self.cores[nid].tick()
            self.run()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for c in self.cores.values():
                c.tick()
            self.run()

    def elect(self, nid: str) -> RaftCore:
        c = self.cores[nid]
        for _ in range(3 * c.election_ticks):
            self.tick(nid)
            if c.role == Role.LEADER:
                break
        assert c.role == Role.LEADER, c
        return c

    def leaders(self) -> list[str]:
        return [i for i, c in self.cores.items() if c.role == Role.LEADER]


def cluster(n: int = 3, **kw) -> Net:
    ids = tuple(f"n{i}" for i in range(1, n + 1))
    return Net([core(i, ids, **kw) for i in ids])


# -- elections -------------------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_election_one_leader_new_term(n: int, pre_vote: bool) -> None:
    net = cluster(n, pre_vote=pre_vote)
    ld = net.elect("n1")
    assert net.leaders() == ["n1"]
    assert ld.term == 2  # bootstrap is term 1
    for c in net.cores.values():
        assert (c.term, c.leader) == (2, "n1")
    # The new leader's no-op commits everywhere.
    assert all(c.commit == 2 for c in net.cores.values())
    assert ld.log.term(2) == 2 and ld.log.entries[0].type == EntryType.EMPTY


def test_vote_refused_to_stale_log() -> None:
    net = cluster(3)
    net.elect("n1")
    net.isolate("n3")
    net.cores["n1"].propose(b"x")
    net.run()
    net.heal()
    # n3 lacks an entry the others have: nobody votes for it, whatever its term.
    n3 = net.cores["n3"]
    n3.step(Message(MsgType.TIMEOUT_NOW, "n1", "n3", n3.term))  # forced campaign, no pre-vote, no lease
    net.run()
    assert n3.role != Role.LEADER
    assert net.leaders() in (["n1"], [], ["n2"])


@pytest.mark.parametrize(
    "pre_vote,check_quorum,disrupted",
    [
        # Pre-vote: the isolated node never wins a pre-vote, so it never bumps
        # its term, and after rejoining its (stale) pre-votes are refused.
        (True, True, False),
        (True, False, False),
        # Without pre-vote it bumps its term while alone; once back, the higher
        # term deposes the leader (via a vote request, or -- when the lease makes
        # the others ignore those -- via its answer to the leader's appends).
        (False, True, True),
        (False, False, True),
    ],
)
def test_partitioned_node_rejoining(pre_vote: bool, check_quorum: bool, disrupted: bool) -> None:
    net = cluster(3, pre_vote=pre_vote, check_quorum=check_quorum)
    ld = net.elect("n1")
    net.isolate("n3")
    ld.propose(b"while n3 was away")
    net.run()
    net.tick("n3", 50)  # campaigns again and again on its own
    n3 = net.cores["n3"]
    assert (n3.term > ld.term) == (not pre_vote)
    net.heal()
    term = ld.term
    net.tick("n3", 2 * n3.election_ticks)  # n3 campaigns once more, now reaching everyone
    net.tick("n1", 2)
    if disrupted:
        assert ld.term > term
    else:
        assert (ld.role, ld.term) == (Role.LEADER, term)
        assert (n3.leader, n3.term) == ("n1", term)


@pytest.mark.parametrize("check_quorum,steps_down", [(True, True), (False, False)])
def test_check_quorum(check_quorum: bool, steps_down: bool) -> None:
    net = cluster(3, check_quorum=check_quorum)
    ld = net.elect("n1")
    net.isolate("n1")
    # Peers count as active for the first timeout after the election.
    net.tick("n1", 2 * ld.election_ticks)
    assert (ld.role != Role.LEADER) == steps_down
    with pytest.raises(NotLeader) if steps_down else _nothing():
        ld.propose(b"x")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_propose_on_follower_raises_not_leader_with_leader_id() -> None:
    net = cluster(3)
    net.elect("n2")
    with pytest.raises(NotLeader) as ei:
        net.cores["n1"].propose(b"x")
    assert ei.value.leader_id == "n2"


# -- replication --------------------------------------------------------------------------


def test_replication_batches_and_commits() -> None:
    net = cluster(3, max_msg_entries=8)
    ld = net.elect("n1")
    idx = [ld.propose(b"v%d" % i) for i in range(40)]
    assert idx == list(range(3, 43))
    net.run()
    for c in net.cores.values():
        assert c.commit == 42
    datas = [e.data for e in net.applied["n2"] if e.type == EntryType.NORMAL]
    assert datas == [b"v%d" % i for i in range(40)]
    # 40 entries in batches of at most 8 per message.
    apps = [m for m in net.sent if m.type == MsgType.APP and m.to == "n2" and m.entries]
    assert all(len(m.entries) <= 8 for m in apps) and len(apps) <= 8


def test_append_messages_are_bounded_by_bytes_too() -> None:
    net = cluster(3, max_msg_entries=64, max_msg_bytes=1000)
    ld = net.elect("n1")
    net.sent.clear()
    for i in range(6):
        ld.propose(bytes([65 + i]) * 400)  # three fit in 1000 bytes only as two
    ld.propose(b"x" * 5000)  # larger than the cap: still sent, alone
    net.run()
    apps = [m for m in net.sent if m.type == MsgType.APP and m.to == "n2" and m.entries]
    assert all(sum(len(e.data) for e in m.entries) <= 1000 or len(m.entries) == 1 for m in apps)
    assert any(len(m.entries) == 1 and len(m.entries[0].data) == 5000 for m in apps)
    assert all(c.commit == ld.commit for c in net.cores.values())
    datas = [e.data for e in net.applied["n3"] if e.type == EntryType.NORMAL]
    assert datas == [bytes([65 + i]) * 400 for i in range(6)] + [b"x" * 5000]


def test_leader_does_not_commit_old_term_entry_by_counting_replicas() -> None:
    """Raft Figure 8: an entry of an earlier term is committed only with one of the current term."""
    ids = ("n1", "n2", "n3", "n4", "n5")
    b = boot(ids)
    old = Entry(2, 2, EntryType.NORMAL, b"old")
    # n1, n2 hold index 2 from the term-2 leader; n5 has a different index 2 from term 3.
    logs = {"n1": [old], "n2": [old], "n3": [], "n4": [], "n5": [Entry(3, 2, EntryType.NORMAL, b"other")]}
    cores = [
        core(i, (), snapshot=b, hard_state=HardState(3, "", 1), entries=logs[i], max_msg_entries=1)
        for i in ids
    ]
    net = Net(cores)
    # n3 must not receive the new leader's no-op (index 3); n4/n5 receive nothing.
    n3 = net.cores["n3"]
    net.drop = lambda m: (
        m.to in ("n4", "n5") or (m.to == "n3" and n3.last_index >= 2 and any(e.index == 3 for e in m.entries))
    )
    n1 = net.elect("n1")
    assert n1.role == Role.LEADER and n1.term == 4
    net.run()
    # Index 2 (term 2) is on n1, n2, n3: a majority of 5, but it must not count.
    assert [net.cores[i].log.term(2) for i in ("n1", "n2", "n3")] == [2, 2, 2]
    assert n1.progress("n3").match == 2
    assert n1.commit == 1
    net.drop = lambda m: False
    net.tick("n1")
    assert n1.commit == 3 and net.cores["n5"].log.term(2) == 2


@pytest.mark.parametrize("divergent", [1, 30, 200])
def test_conflict_backtracking_skips_terms_with_hints(divergent: int) -> None:
    ids = ("n1", "n2", "n3")
    b = boot(ids)
    # n3 led term 2 in a minority and appended `divergent` entries nobody else has.
    common = [Entry(2, 2, EntryType.EMPTY)]
    n3_log = common + [Entry(2, i, EntryType.NORMAL, b"lost") for i in range(3, 3 + divergent)]
    other = (
        common + [Entry(3, 3, EntryType.EMPTY)] + [Entry(3, i, EntryType.NORMAL, b"ok") for i in range(4, 60)]
    )
    cores = [
        core("n1", (), snapshot=b, hard_state=HardState(3, "", 2), entries=other),
        core("n2", (), snapshot=b, hard_state=HardState(3, "", 2), entries=other),
        core("n3", (), snapshot=b, hard_state=HardState(2, "n3", 2), entries=n3_log),
    ]
    net = Net(cores)
    n1 = net.elect("n1")
    net.run()
    n3 = net.cores["n3"]
    assert n3.last_index == n1.last_index and n3.log.term(3) == 3
    assert all(e.data != b"lost" for e in n3.log.entries)
    rejects = [m for m in net.sent if m.type == MsgType.APP_RESP and m.reject and m.frm == "n3"]
    # One rejection for the probe; the hint jumps over all of n3's term-2 entries at once.
    assert 1 <= len(rejects) <= 2
    assert n3.commit == n1.commit == n1.last_index


def test_snapshot_sent_to_lagging_follower() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    net.isolate("n3")
    for i in range(30):
        ld.propose(b"v%d" % i)
    net.run()
    assert ld.applied == ld.commit == 32
    snap = ld.compact(30, b"state@30")
    assert snap.meta == SnapshotMeta(30, 2, ConfState(("n1", "n2", "n3")))
    assert ld.log.snap_index == 30 and ld.log.first_index == 31
    net.heal()
    net.tick("n1", 2)
    n3 = net.cores["n3"]
    snaps = [m for m in net.sent if m.type == MsgType.SNAP and m.to == "n3"]
    assert len(snaps) == 1 and snaps[0].snapshot is snap
    assert n3.log.snap_index == 30 and n3.commit == 32 and n3.applied == 32
    assert n3.snapshot is snap
    assert ld.progress("n3").match == 32


def test_snapshot_failure_reported_by_transport_falls_back_to_probe() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    net.isolate("n3")
    for i in range(10):
        ld.propose(b"v%d" % i)
    net.run()
    ld.compact(ld.applied, b"s")
    net.heal()
    net.drop = lambda m: m.type == MsgType.SNAP  # the transport fails every snapshot stream
    net.tick("n1", 3)
    assert sum(m.type == MsgType.SNAP and m.to == "n3" for m in net.sent) >= 2  # retried
    pr = ld.progress("n3")
    assert pr.state == ProgressState.PROBE and pr.probe_sent  # waits for a heartbeat answer
    net.drop = lambda m: False
    net.tick("n1", 3)
    assert net.cores["n3"].commit == ld.commit and ld.progress("n3").state == ProgressState.REPLICATE


# -- leadership transfer ----------------------------------------------------------------------


@pytest.mark.parametrize("lagging", [False, True])
def test_leadership_transfer(lagging: bool) -> None:
    net = cluster(3)
    ld = net.elect("n1")
    if lagging:
        net.isolate("n2")
        for i in range(5):
            ld.propose(b"v%d" % i)
        net.run()
        net.heal()
    ld.transfer_leadership("n2")
    if lagging:
        # n2 first catches up; meanwhile the leader refuses proposals.
        assert ld.lead_transferee == "n2" and ld.progress("n2").match < ld.last_index
        with pytest.raises(ProposalDropped):
            ld.propose(b"late")
    net.run()
    n2 = net.cores["n2"]
    assert n2.role == Role.LEADER and n2.term == 3
    assert ld.role == Role.FOLLOWER and ld.leader == "n2"


def test_transfer_blocks_proposals_until_done_or_timeout() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    net.isolate("n2")
    ld.transfer_leadership("n2")
    with pytest.raises(ProposalDropped):
        ld.propose(b"x")
    net.cut = {("n1", "n2"), ("n2", "n1")}
    net.tick("n1", ld.election_ticks)  # the transfer times out
    assert ld.role == Role.LEADER and ld.lead_transferee == ""
    ld.propose(b"x")


# -- membership -----------------------------------------------------------------------------


def test_add_node_learns_conf_from_snapshot_and_log() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    ld.propose(b"a")
    net.run()
    n4 = core("n4", ())
    assert n4.voters == () and not n4.has_ready()
    net.add(n4)
    idx = ld.propose_conf_change(ConfChange(ConfChangeType.ADD, "n4", b"addr"))
    assert ld.voters == ("n1", "n2", "n3", "n4")  # effective once appended
    net.run()
    net.tick("n1", 2)
    assert n4.voters == ("n1", "n2", "n3", "n4") and n4.commit >= idx
    assert all(c.commit == ld.commit for c in net.cores.values())
    # Quorum is now 3 of 4: with two nodes cut off, nothing commits.
    net.isolate("n3")
    net.isolate("n4")
    i = ld.propose(b"b")
    net.run()
    assert ld.commit < i


def test_conf_change_one_at_a_time() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    net.isolate("n2")
    net.isolate("n3")
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "n3"))
    with pytest.raises(ConfChangePending):
        ld.propose_conf_change(ConfChange(ConfChangeType.ADD, "n4"))
    net.heal()
    net.run()
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD, "n4"))


@pytest.mark.parametrize(
    "cc",
    [ConfChange(ConfChangeType.ADD, "n2"), ConfChange(ConfChangeType.REMOVE, "n9")],
)
def test_conf_change_meaningless_refused(cc: ConfChange) -> None:
    net = cluster(3)
    ld = net.elect("n1")
    with pytest.raises(InvalidArgument):
        ld.propose_conf_change(cc)


def test_new_leader_refuses_conf_change_before_committing_in_its_term() -> None:
    net = cluster(3, check_quorum=False)  # no lease: n3 votes for n2 at once
    ld = net.elect("n1")
    net.run()
    net.isolate("n1")
    # n2 wins, but its no-op never reaches anyone: it has not committed in its term.
    net.drop = lambda m: m.type == MsgType.APP and m.frm == "n2" and bool(m.entries)
    n2 = net.elect("n2")
    assert n2.commit < n2.last_index
    n2.propose(b"x")
    with pytest.raises(ConfChangePending):
        n2.propose_conf_change(ConfChange(ConfChangeType.ADD, "n4"))
    del ld


def test_removed_leader_steps_down_after_commit() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    idx = ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "n1"))
    assert ld.voters == ("n2", "n3") and ld.role == Role.LEADER
    net.run()
    assert ld.role == Role.FOLLOWER and net.cores["n2"].commit >= idx
    # It never campaigns again; the remaining two elect a leader.
    net.tick("n1", 50)
    assert ld.role == Role.FOLLOWER and ld.term == 2
    del net.cores["n1"]
    net.tick_all(30)
    assert net.leaders() == ["n2"] and net.cores["n2"].voters == ("n2", "n3")


def test_truncated_conf_entry_reverts_configuration() -> None:
    ids = ("n1", "n2", "n3")
    b = boot(ids)
    c = core("n3", (), snapshot=b, hard_state=HardState(2, "", 1))
    cc = Entry(2, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD, "n4").encode())
    c.step(Message(MsgType.APP, "n1", "n3", 2, 1, 1, (cc,), 1))
    assert c.voters == ("n1", "n2", "n3", "n4")
    # A new leader (term 3) overwrites index 2.
    c.step(Message(MsgType.APP, "n2", "n3", 3, 1, 1, (Entry(3, 2, EntryType.EMPTY),), 1))
    assert c.voters == ("n1", "n2", "n3")


# -- reads ------------------------------------------------------------------------------------


def test_read_index_on_leader_needs_heartbeat_quorum() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    ld.propose(b"a")
    net.run()
    net.isolate("n1")
    ld.read_index(b"r1")
    net.run()
    assert net.read_states["n1"] == []  # cannot confirm leadership alone
    net.heal()
    ld.read_index(b"r2")
    net.run()
    # The confirmation of r2 also confirms the earlier r1.
    assert net.read_states["n1"] == [ReadState(3, b"r1"), ReadState(3, b"r2")]


def test_read_index_forwarded_from_follower() -> None:
    net = cluster(3)
    net.elect("n1")
    net.cores["n2"].read_index(b"q")
    net.run()
    assert net.read_states["n2"] == [ReadState(2, b"q")]
    no_leader = core("n9", ())
    with pytest.raises(NotLeader):
        no_leader.read_index(b"z")


def test_read_index_waits_for_first_commit_of_term() -> None:
    net = cluster(3, check_quorum=False)
    net.elect("n1")
    net.isolate("n1")
    n2 = net.elect("n2")
    net.isolate("n2")
    n2.read_index(b"r")
    net.run()
    assert net.read_states["n2"] == []
    net.heal()
    net.cut = {("n1", "n2"), ("n2", "n1")}
    net.tick("n2")
    assert net.read_states["n2"] == [ReadState(n2.commit, b"r")]


# -- restart ----------------------------------------------------------------------------------


def test_restart_from_persisted_state_keeps_vote_and_log() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    ld.propose(b"a")
    net.run()
    n2 = net.cores["n2"]
    hs = HardState(n2.term, n2.vote, n2.commit)
    again = core("n2", ("ignored",), hard_state=hs, snapshot=BOOT, entries=list(n2.log.entries))
    assert (again.term, again.vote, again.commit, again.applied) == (2, "n1", 3, 1)
    assert again.voters == ("n1", "n2", "n3")
    rd = again.ready()
    assert [e.data for e in rd.committed_entries] == [b"", b"a"]
    assert rd.entries == [] and rd.hard_state is None


def test_ready_persist_before_send_contract() -> None:
    """A vote grant leaves in the same Ready as the hard state recording it."""
    c = core("n2")
    c.advance(c.ready())
    c.step(Message(MsgType.VOTE, "n1", "n2", 2, 1, 1))
    rd = c.ready()
    assert rd.hard_state == HardState(2, "n1", 1)
    assert [(m.type, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, False)]


def test_stale_shorter_append_does_not_truncate() -> None:
    """A reordered/duplicated older AppendEntries must not cut entries already acknowledged."""
    c = core("n2", (), snapshot=BOOT, hard_state=HardState(2, "n1", 1))
    e2, e3, e4 = (Entry(2, i, EntryType.NORMAL, b"%d" % i) for i in (2, 3, 4))
    c.step(Message(MsgType.APP, "n1", "n2", 2, 1, 1, (e2, e3, e4), 1))
    c.step(Message(MsgType.APP, "n1", "n2", 2, 1, 1, (e2,), 1))  # the older, shorter one
    assert c.last_index == 4
    resp = [m for m in c.ready().messages if m.type == MsgType.APP_RESP]
    assert [m.index for m in resp] == [4, 2] and not any(m.reject for m in resp)


def test_unreachable_stops_pipelining() -> None:
    net = cluster(3)
    ld = net.elect("n1")
    assert ld.progress("n2").state == ProgressState.REPLICATE
    ld.step(Message(MsgType.UNREACHABLE, "n2", "n1"))
    assert ld.progress("n2").state == ProgressState.PROBE
    ld.propose(b"x")  # the next append is a probe; its acknowledgement resumes pipelining
    net.run()
    assert ld.progress("n2").state == ProgressState.REPLICATE


@pytest.mark.parametrize("pre_vote,check_quorum", [(False, False), (True, True)])
def test_stale_leader_learns_higher_term_from_a_non_voter(pre_vote: bool, check_quorum: bool) -> None:
    """A node that cannot campaign (it does not know it was added) must still tell a stale leader its term.

    Found by the simulator (seed 1002947): with pre-vote and check-quorum off,
    a joining node stuck at a higher term ignored the leader forever.
    """
    n4 = core(
        "n4",
        (),
        snapshot=BOOT,
        hard_state=HardState(7, "n3", 1),
        pre_vote=pre_vote,
        check_quorum=check_quorum,
    )
    n4.step(Message(MsgType.HEARTBEAT, "n1", "n4", 2, commit=1))
    out = n4.ready().messages
    assert [(m.type, m.to, m.term) for m in out] == [(MsgType.APP_RESP, "n1", 7)]
    # ...and the leader steps down on hearing it.
    net = cluster(3, pre_vote=pre_vote, check_quorum=check_quorum)
    ld = net.elect("n1")
    ld.step(Message(MsgType.APP_RESP, "n4", "n1", 7))
    assert (ld.role, ld.term) == (Role.FOLLOWER, 7)


@pytest.mark.parametrize(
    "mtype,resp", [(MsgType.VOTE, MsgType.VOTE_RESP), (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP)]
)
def test_lower_term_campaign_learns_our_term(mtype: MsgType, resp: MsgType) -> None:
    """Found by the simulator (seed 1009046): a candidate at a lower term must be told ours."""
    c = core("n2", snapshot=BOOT, hard_state=HardState(9, "n2", 1))
    c.step(Message(mtype, "n1", "n2", 5, 1, 1))
    assert [(m.type, m.term, m.reject) for m in c.ready().messages] == [(resp, 9, True)]
    cand = core("n1", snapshot=BOOT, hard_state=HardState(5, "n1", 1))
    cand.step(Message(MsgType.VOTE_RESP, "n2", "n1", 9, reject=True))
    assert (cand.term, cand.role) == (9, Role.FOLLOWER)
