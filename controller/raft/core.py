"""The pure Raft state machine: tick(), step(), propose(), ready()/advance() -- no I/O, clock or randomness.

Modelled on etcd's raft package. The driver feeds it ticks and messages and
drains Ready batches (see types.Ready for the persist -> send -> apply ->
advance contract). Everything that touches disk, network or time lives in
the driver; the election-timeout jitter comes from an injected `rand`.

Choices worth knowing (each is explained again where it is implemented):

* Bootstrap. A node constructed with `voters` and no persisted state starts
  from a bootstrap snapshot: index 1, term 1, conf = voters, empty data
  (the empty state machine), emitted in the first Ready to be persisted.
  Every initial member builds the same one, so the logs agree from index 2.
  A node added later is constructed with no voters and no state: it cannot
  campaign, and it learns the configuration atomically from the snapshot
  the leader sends it (never from a prefix of ADD entries, which would give
  it configurations that never existed -- the simulator found a new node
  electing itself alone that way). The driver applies only NORMAL entries
  to the state machine, and restores empty snapshot data as the empty state.
* Membership changes take effect when the CONF_CHANGE entry is APPENDED to a
  log, not when it is applied (Raft thesis §4.1). With one voter added or
  removed at a time, any two consecutive configurations' majorities overlap,
  whatever mix of old and new each node is using; applying at append time
  means no node ever runs two changes behind. A truncated conf entry reverts
  the configuration. A leader accepts a new change only after the previous
  one is committed AND it has committed an entry of its own term (the fix for
  the single-server-change bug, Ongaro 2015): both hold once
  `commit >= pending_conf_index`, which becoming leader sets to the index of
  its no-op entry.
* A removed leader keeps leading (without counting itself in majorities)
  until its removal commits, then steps down. Nodes outside the configuration
  never campaign.
* Errors: propose()/propose_conf_change()/transfer_leadership() raise
  lepton.errors.NotLeader when this node is not leader; ProposalDropped
  (retryable) while a leadership transfer is in progress; ConfChangePending
  (retryable) for a conf change while another is uncommitted;
  InvalidArgument for a meaningless conf change. read_index() raises
  NotLeader when no leader is known; a read accepted by a node that loses
  leadership before confirming it is silently dropped (the driver times out).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from lepton.errors import NotLeader

from .core_leader import ConfChangePending, LeaderMixin, ProposalDropped, ReadRequest
from .progress import REPLICATE, SNAPSHOT, Progress
from .raftlog import RaftLog
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = ["RaftCore", "NotLeader", "ProposalDropped", "ConfChangePending", "TRANSFER_CONTEXT"]

# VOTE.context marking a campaign started by TIMEOUT_NOW: voters grant it even
# while they still hear from the (transferring) leader.
TRANSFER_CONTEXT = b"lepton-transfer"

_FOLLOWER, _PRE_CANDIDATE, _CANDIDATE, _LEADER = (
    Role.FOLLOWER,
    Role.PRE_CANDIDATE,
    Role.CANDIDATE,
    Role.LEADER,
)
_APP, _APP_RESP = MsgType.APP, MsgType.APP_RESP
_HB, _HB_RESP = MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP
_VOTE, _VOTE_RESP = MsgType.VOTE, MsgType.VOTE_RESP
_PRE_VOTE, _PRE_VOTE_RESP = MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP
_SNAP = MsgType.SNAP
_CONF = EntryType.CONF_CHANGE


class RaftCore(LeaderMixin):
    """One Raft replica's consensus state. Not thread-safe; the driver serialises calls."""

    def __init__(
        self,
        id: str,
        voters: Iterable[str] = (),
        *,
        rand: Callable[[int, int], int] | random.Random,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_msg_entries: int = 64,
        max_msg_bytes: int = 1 << 20,
        max_inflight: int = 256,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        if heartbeat_ticks < 1 or election_ticks <= heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        self._id = id
        # rand(lo, hi) -> int in [lo, hi); a random.Random works too.
        self._rand: Callable[[int, int], int] = rand.randrange if hasattr(rand, "randrange") else rand  # type: ignore[union-attr]
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_msg_entries = max_msg_entries
        # Entry data bytes per AppendEntries (0 = no limit); one entry always fits.
        self.max_msg_bytes = max_msg_bytes
        self.max_inflight = max_inflight

        fresh = hard_state is None and snapshot is None and not entries
        bootstrap = fresh and bool(voters := tuple(sorted(set(voters))))
        if bootstrap:
            snapshot = Snapshot(SnapshotMeta(1, 1, ConfState(voters)))
            hard_state = HardState(1, "", 1)
        self.log = RaftLog(snapshot, list(entries))
        if bootstrap:
            # Handed to the driver to persist (and restore, as the empty state) in the first Ready.
            self.log.pending_snapshot = snapshot
        # The latest snapshot, sent to followers whose next entry was compacted away.
        self._snapshot: Snapshot | None = snapshot
        hs = hard_state or HardState()
        self._term = hs.term
        self._vote = hs.vote
        # Configuration history: (index, voters) for the compaction point and every
        # conf entry in the log, so a truncation can revert to the previous one.
        base = snapshot.meta.conf.voters if snapshot is not None else ()
        self._conf_hist: list[tuple[int, tuple[str, ...]]] = [(self.log.snap_index, tuple(base))]
        self._voters: tuple[str, ...] = tuple(base)
        self._voter_set: frozenset[str] = frozenset(base)
        for e in self.log.entries:
            if e.type == _CONF:
                self._conf_entry_appended(e)

        if hs.commit:
            # Persisted commit may lag what the log holds, never lead it.
            self.log.committed = max(self.log.snap_index, min(hs.commit, self.log.last_index))

        self._role = _FOLLOWER
        self._leader = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._votes: dict[str, bool] = {}
        self._prs: dict[str, Progress] = {}
        self._lead_transferee = ""
        self._pending_conf_index = 0
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads: list[ReadRequest] = []  # awaiting a heartbeat quorum, oldest first
        self._reads_waiting: list[tuple[bytes, str]] = []  # awaiting the first commit of this term
        self._bcast_entries = False  # entries appended; send them at the next ready()
        self._bcast_commit = False  # commit advanced; tell followers at the next ready()
        # What the driver last persisted/observed, to tell what changed.
        self._prev_hs = (self._term, self._vote, self.log.committed)
        if bootstrap:
            self._prev_hs = (0, "", 0)
        self._prev_ss = (self._leader, self._role)

    # -- read-only properties -------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> str:
        return self._vote

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> str:
        return self._leader

    @property
    def commit(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def voters(self) -> tuple[str, ...]:
        return self._voters

    @property
    def lead_transferee(self) -> str:
        return self._lead_transferee

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot this node holds (compacted locally or received)."""
        return self._snapshot

    def progress(self, peer: str) -> Progress | None:
        """The leader's view of `peer` (for tests and status pages); None when not leader."""
        return self._prs.get(peer) if self._role == _LEADER else None

    def _promotable(self) -> bool:
        return self._id in self._voter_set

    def _quorum(self) -> int:
        return len(self._voters) // 2 + 1

    # -- configuration ------------------------------------------------------------

    def _conf_entry_appended(self, e: Entry) -> None:
        cc = ConfChange.decode(e.data)
        cur = self._voters
        if cc.type == ConfChangeType.ADD:
            new = cur if cc.node_id in cur else (*cur, cc.node_id)
        else:
            new = tuple(v for v in cur if v != cc.node_id)
        self._conf_hist.append((e.index, new))
        self._set_voters(new)

    def _conf_truncated(self, from_index: int) -> None:
        """Reverts configurations whose entries were truncated at or after from_index."""
        hist = self._conf_hist
        if hist[-1][0] < from_index:
            return
        while len(hist) > 1 and hist[-1][0] >= from_index:
            hist.pop()
        self._set_voters(hist[-1][1])

    def _set_voters(self, voters: tuple[str, ...]) -> None:
        self._voters = voters
        self._voter_set = frozenset(voters)
        if getattr(self, "_role", None) != _LEADER:
            return
        last = self.log.last_index
        for v in voters:
            if v not in self._prs:
                # A new member starts unknown: probe from the end and walk back.
                self._prs[v] = Progress(last + 1, self.max_inflight)
        for v in list(self._prs):
            if v not in self._voter_set and v != self._id:
                del self._prs[v]
        if self._lead_transferee and self._lead_transferee not in self._voter_set:
            self._lead_transferee = ""

    def _conf_at(self, index: int) -> tuple[str, ...]:
        conf = self._conf_hist[0][1]
        for i, v in self._conf_hist:
            if i > index:
                break
            conf = v
        return conf

    def _append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        """Appends to the log (truncating a conflicting suffix) and tracks configuration entries."""
        if ents[0].index <= self.log.last_index:
            self._conf_truncated(ents[0].index)
        self.log.append(ents)
        for e in ents:
            if e.type == _CONF:
                self._conf_entry_appended(e)

    # -- role transitions ---------------------------------------------------------

    def _reset_randomized_timeout(self) -> None:
        self._randomized_timeout = self.election_ticks + self._rand(0, self.election_ticks)

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = ""
        self._leader = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._lead_transferee = ""
        self._votes = {}
        self._prs = {}
        self._pending_conf_index = 0
        # Reads not yet confirmed cannot be any more: the driver times them out.
        self._reads = []
        self._reads_waiting = []
        self._bcast_entries = self._bcast_commit = False

    def _become_follower(self, term: int, leader: str) -> None:
        self._reset(term)
        self._role = _FOLLOWER
        self._leader = leader

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a node that cannot win
        # (partitioned, stale log) must not disrupt the cluster by bumping terms.
        self._role = _PRE_CANDIDATE
        self._leader = ""
        self._votes = {}
        # A fresh timeout per attempt keeps competing pre-candidates from colliding forever.
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._role = _CANDIDATE
        self._vote = self._id

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = _LEADER
        self._leader = self._id
        last = self.log.last_index
        mi = self.max_inflight
        for v in self._voters:
            self._prs[v] = Progress(last + 1, mi)
        if self._id not in self._prs:
            # A leader being removed still tracks its own log (not counted in quorums).
            self._prs[self._id] = Progress(last + 1, mi)
        # The no-op commits entries of earlier terms (§5.4.2: they are never
        # committed by counting replicas) and lets read_index proceed.
        e = Entry(self._term, last + 1, EntryType.EMPTY)
        self.log.append([e])
        # No conf change until the no-op is committed (see module docstring).
        self._pending_conf_index = e.index
        me = self._prs[self._id]
        me.match, me.next = e.index, e.index + 1
        me.become_replicate()
        if not self._maybe_commit():
            self._bcast_entries = True

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if not self._promotable():
            return
        if pre:
            self._become_pre_candidate()
            vote_term, mtype = self._term + 1, _PRE_VOTE
        else:
            self._become_candidate()
            vote_term, mtype = self._term, _VOTE
        if self._poll(self._id, True) == 1:
            # Single-voter configuration: we are the quorum.
            if pre:
                self._campaign(False, transfer)
            else:
                self._become_leader()
            return
        li, lt = self.log.last_index, self.log.last_term
        ctx = TRANSFER_CONTEXT if transfer else b""
        for v in self._voters:
            if v != self._id:
                self._msgs.append(Message(mtype, self._id, v, vote_term, lt, li, context=ctx))

    def _poll(self, frm: str, granted: bool) -> int:
        """Records a vote; returns 1 when won, -1 when lost, 0 when undecided."""
        self._votes.setdefault(frm, granted)
        q = self._quorum()
        yes = no = 0
        for v in self._voters:
            g = self._votes.get(v)
            if g is True:
                yes += 1
            elif g is False:
                no += 1
        if yes >= q:
            return 1
        if no > len(self._voters) - q:
            return -1
        return 0

    # -- ticks ----------------------------------------------------------------------

    def tick(self) -> None:
        if self._role == _LEADER:
            self._tick_heartbeat()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._campaign(self.pre_vote)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.election_ticks:
            self._election_elapsed = 0
            if self.check_quorum and not self._quorum_active():
                # A leader cut off from a majority must stop serving (reads in
                # particular) and let the majority side elect a new one.
                self._become_follower(self._term, "")
                return
            # A transfer that has not finished within an election timeout failed.
            self._lead_transferee = ""
        if self._heartbeat_elapsed >= self.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads[-1].context if self._reads else b"")

    def _quorum_active(self) -> bool:
        active = 0
        for v in self._voters:
            if v == self._id:
                active += 1
                continue
            pr = self._prs.get(v)
            if pr is not None and pr.recent_active:
                active += 1
        for k, pr in self._prs.items():
            if k != self._id:
                pr.recent_active = False
        return active >= self._quorum()

    # -- step -----------------------------------------------------------------------

    def step(self, m: Message) -> None:
        mt = m.type
        if mt == MsgType.SNAP_STATUS or mt == MsgType.UNREACHABLE:
            # Local reports from the transport carry no term.
            if self._role == _LEADER:
                self._step_local_report(m)
            return
        if m.term > self._term:
            if mt in (_VOTE, _PRE_VOTE):
                in_lease = (
                    self.check_quorum and self._leader != "" and self._election_elapsed < self.election_ticks
                )
                if in_lease and m.context != TRANSFER_CONTEXT:
                    # Leader lease: we heard from a live leader less than an
                    # election timeout ago, so this candidate is disruptive
                    # (e.g. just rejoined from a partition): neither adopt its
                    # term nor answer.
                    return
            if mt == _PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif mt == _PRE_VOTE_RESP and not m.reject:
                pass  # a granted pre-vote carries the term we would campaign at
            elif mt in (_APP, _HB, _SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, "")
        elif m.term < self._term:
            if mt in (_APP, _HB):
                # A stale leader must learn of our newer term, or it keeps us
                # out for good: with lease or pre-vote our campaigns may never
                # reach it, and a node that is not (or does not yet know it is)
                # a voter never campaigns at all. (etcd answers only with
                # check-quorum/pre-vote on; the simulator found a joining node
                # stranded at a higher term with both off.) This answer makes
                # the stale leader step down.
                self._send(Message(_APP_RESP, self._id, m.frm, self._term))
            elif mt in (_PRE_VOTE, _VOTE):
                # Tell a lagging (pre-)candidate our term so it can catch up.
                # etcd ignores stale votes; the simulator found two candidates
                # that never converged that way: one (with a stale log and
                # configuration) never contacted the other, whose lower-term
                # requests it ignored, each campaigning at the same pace.
                resp = _PRE_VOTE_RESP if mt == _PRE_VOTE else _VOTE_RESP
                self._send(Message(resp, self._id, m.frm, self._term, reject=True))
            return

        if mt in (_VOTE, _PRE_VOTE):
            self._step_vote(m)
            return
        role = self._role
        if role == _LEADER:
            self._step_leader(m)
        elif role == _FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _step_vote(self, m: Message) -> None:
        pre = m.type == _PRE_VOTE
        can_vote = (
            self._vote == m.frm  # a repeated request (retransmission)
            or (self._vote == "" and self._leader == "")  # we have not voted and know no leader
            or (pre and m.term > self._term)  # a pre-vote for a future term
        )
        resp = _PRE_VOTE_RESP if pre else _VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Answer at the candidate's term: for a pre-vote that term is one we
            # have not adopted, and the pre-candidate must recognise the answer.
            self._send(Message(resp, self._id, m.frm, m.term))
            if not pre:
                # Only a real vote is recorded; it goes out in a Ready whose
                # hard state persists it first.
                self._election_elapsed = 0
                self._vote = m.frm
        else:
            self._send(Message(resp, self._id, m.frm, self._term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        mt = m.type
        if mt in (_APP, _HB, _SNAP):
            # A leader exists at our term (a pre-candidate's term is the current one).
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        mine = _PRE_VOTE_RESP if self._role == _PRE_CANDIDATE else _VOTE_RESP
        if mt != mine:
            return
        r = self._poll(m.frm, not m.reject)
        if r == 1:
            if self._role == _PRE_CANDIDATE:
                self._campaign(False)
            else:
                self._become_leader()
        elif r == -1:
            self._become_follower(self._term, "")

    def _step_follower(self, m: Message) -> None:
        mt = m.type
        if mt == _APP:
            self._election_elapsed = 0
            self._leader = m.frm
            self._handle_append(m)
        elif mt == _HB:
            self._election_elapsed = 0
            self._leader = m.frm
            # The leader sends min(our match, its commit); clamp anyway.
            c = min(m.commit, self.log.last_index)
            self.log.commit_to(c)
            self._send(Message(_HB_RESP, self._id, m.frm, self._term, context=m.context))
        elif mt == _SNAP:
            self._election_elapsed = 0
            self._leader = m.frm
            self._handle_snapshot(m)
        elif mt == MsgType.TIMEOUT_NOW:
            # Leadership transfer: campaign now, skipping pre-vote (the leader
            # asked for it, so the election is not a disruption).
            self._campaign(False, transfer=True)
        elif mt == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        # READ_INDEX reaching a follower was meant for a leader we no longer
        # are: drop it, the requester times out and retries where the leader is.

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            # Everything up to our commit index is known to match; say so.
            self._send(Message(_APP_RESP, self._id, m.frm, self._term, index=log.committed))
            return
        if log.match_term(m.index, m.log_term):
            ents = m.entries
            lastnew = m.index + len(ents)
            if ents:
                # Skip entries we already have: a duplicated or reordered
                # (shorter) append must never truncate entries we acknowledged.
                last = log.last_index
                for i, e in enumerate(ents):
                    if e.index > last or log.term(e.index) != e.term:
                        if e.index <= log.committed:
                            raise AssertionError(f"{self._id}: conflict at committed index {e.index}")
                        self._append(ents[i:])
                        break
            log.commit_to(min(m.commit, lastnew))
            self._send(Message(_APP_RESP, self._id, m.frm, self._term, index=lastnew))
            return
        # Mismatch at m.index: hint the largest index whose term is <= the
        # leader's term there, so the leader can skip a whole term at once.
        hint = log.find_conflict_by_term(min(m.index, log.last_index), m.log_term)
        self._send(
            Message(
                _APP_RESP,
                self._id,
                m.frm,
                self._term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                hint_term=log.term(hint) or 0,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        meta = snap.meta
        log = self.log
        if meta.index <= log.committed:
            # Old news (duplicate, or we caught up another way).
            self._send(Message(_APP_RESP, self._id, m.frm, self._term, index=log.committed))
            return
        if log.match_term(meta.index, meta.term):
            # We already have the snapshot's last entry: just fast-forward commit.
            log.commit_to(meta.index)
            self._send(Message(_APP_RESP, self._id, m.frm, self._term, index=log.committed))
            return
        log.restore(snap)
        self._snapshot = snap
        self._conf_hist = [(meta.index, tuple(meta.conf.voters))]
        self._set_voters(tuple(meta.conf.voters))
        self._send(Message(_APP_RESP, self._id, m.frm, self._term, index=log.last_index))

    def _step_local_report(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        if m.type == MsgType.UNREACHABLE:
            # Optimistic pipelining into a dead link wastes the window: probe instead.
            if pr.state == REPLICATE:
                pr.become_probe()
            return
        if pr.state != SNAPSHOT:
            return
        if m.reject:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for a heartbeat response before probing: the follower may be
        # busy installing the snapshot, or unreachable.
        pr.probe_sent = True

    # -- snapshots -----------------------------------------------------------------

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The application snapshotted its state at `index` (<= applied): drop the log up to it.

        Returns the Snapshot (meta: index, term, configuration at index) for the
        driver to persist; the core keeps it to send to lagging followers.
        """
        log = self.log
        if index > log.applied:
            raise ValueError(f"compact({index}) beyond applied index {log.applied}")
        if index <= log.snap_index:
            raise ValueError(f"compact({index}): already compacted to {log.snap_index}")
        conf = self._conf_at(index)
        snap = Snapshot(SnapshotMeta(index, log.term(index) or 0, ConfState(conf)), data)
        log.compact(index)
        hist = [(i, v) for i, v in self._conf_hist if i > index]
        self._conf_hist = [(index, conf), *hist]
        self._snapshot = snap
        return snap

    # -- Ready ----------------------------------------------------------------------

    def has_ready(self) -> bool:
        log = self.log
        return bool(
            self._msgs
            or self._bcast_entries
            or self._bcast_commit
            or log.stable < log.last_index
            or log.pending_snapshot is not None
            or self._read_states
            or log.committed > log.applied
            or (self._term, self._vote, log.committed) != self._prev_hs
            or (self._leader, self._role) != self._prev_ss
        )

    def ready(self) -> Ready:
        """The next batch of work. Do not call again before advance() of this one."""
        if self._bcast_entries or self._bcast_commit:
            self._flush_bcast()
        log = self.log
        rd = Ready()
        ss = (self._leader, self._role)
        if ss != self._prev_ss:
            rd.soft_state = SoftState(self._leader, self._role)
        hs = (self._term, self._vote, log.committed)
        if hs != self._prev_hs:
            rd.hard_state = HardState(*hs)
        if log.stable < log.last_index:
            rd.entries = log.unstable()
        snap = log.pending_snapshot
        rd.snapshot = snap
        if log.committed > log.applied:
            lo = max(log.applied, log.snap_index) + 1
            rd.committed_entries = log.slice(lo, log.committed + 1)
        if self._msgs:
            rd.messages, self._msgs = self._msgs, []
        if self._read_states:
            rd.read_states, self._read_states = self._read_states, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has persisted, sent and applied `rd`."""
        log = self.log
        if rd.soft_state is not None:
            self._prev_ss = (rd.soft_state.leader, rd.soft_state.role)
        if rd.hard_state is not None:
            hs = rd.hard_state
            self._prev_hs = (hs.term, hs.vote, hs.commit)
        if rd.snapshot is not None:
            if log.pending_snapshot is rd.snapshot:
                log.pending_snapshot = None
            if rd.snapshot.meta.index > log.applied:
                log.applied = rd.snapshot.meta.index
        if rd.entries:
            e = rd.entries[-1]
            # Entries may have been truncated and replaced since ready(); only
            # mark them stable if they are still ours (same index and term
            # implies an identical prefix, by log matching).
            if e.index > log.stable and log.term(e.index) == e.term:
                log.stable = e.index
        if rd.committed_entries:
            idx = rd.committed_entries[-1].index
            if idx > log.applied:
                log.applied = idx

    def __repr__(self) -> str:
        return (
            f"RaftCore({self._id} {self._role.name} term={self._term} vote={self._vote!r} "
            f"leader={self._leader!r} last={self.log.last_index} commit={self.log.committed} "
            f"applied={self.log.applied} voters={self._voters})"
        )
