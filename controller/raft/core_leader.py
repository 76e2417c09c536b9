"""The leader half of the Raft core: replication, commit, proposals, transfer and read index.

A mixin of RaftCore (core.py), split out only to keep modules small; it
shares RaftCore's state and is pure like it. Flow control per follower lives
in progress.py. Proposals are appended at once but replicated at the next
ready(), so everything proposed between two Ready batches travels in one
AppendEntries per follower (batching); while a follower is in REPLICATE,
batches are sent without waiting for acknowledgements up to max_inflight
(pipelining).
"""

from __future__ import annotations

from lepton.errors import FailedPrecondition, InvalidArgument, NotLeader, Unavailable

from .progress import PROBE, REPLICATE, SNAPSHOT, Progress
from .raftlog import RaftLog
from .types import ConfChange, ConfChangeType, Entry, EntryType, Message, MsgType, ReadState, Role, Snapshot

_LEADER = Role.LEADER
_APP, _APP_RESP = MsgType.APP, MsgType.APP_RESP
_HB, _HB_RESP = MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP
_SNAP = MsgType.SNAP
_CONF = EntryType.CONF_CHANGE


class ProposalDropped(Unavailable):
    """The leader cannot take proposals right now (leadership transfer in progress); retry."""


class ConfChangePending(FailedPrecondition):
    """Another membership change is not yet committed (or the leader has not committed in its term)."""

    retryable = True


class ReadRequest:
    """A read_index() waiting for a heartbeat quorum: serve at `index` once confirmed."""

    __slots__ = ("context", "index", "frm", "acks")

    def __init__(self, context: bytes, index: int, frm: str, acks: set[str]) -> None:
        self.context = context
        self.index = index
        self.frm = frm
        self.acks = acks


class LeaderMixin:
    """Leader-side methods of RaftCore; the attributes below are RaftCore's."""

    _id: str
    _term: int
    _role: Role
    _leader: str
    _voters: tuple[str, ...]
    _voter_set: frozenset[str]
    _prs: dict[str, Progress]
    _msgs: list[Message]
    _lead_transferee: str
    _pending_conf_index: int
    _election_elapsed: int
    _read_states: list[ReadState]
    _reads: list[ReadRequest]
    _reads_waiting: list[tuple[bytes, str]]
    _bcast_entries: bool
    _bcast_commit: bool
    _snapshot: Snapshot | None
    log: RaftLog
    max_msg_entries: int

    def _quorum(self) -> int: ...  # defined by RaftCore
    def _send(self, m: Message) -> None: ...
    def _append(self, ents: list[Entry] | tuple[Entry, ...]) -> None: ...
    def _become_follower(self, term: int, leader: str) -> None: ...

    # -- leader -------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        mt = m.type
        if mt == _APP_RESP:
            self._handle_append_response(m)
        elif mt == _HB_RESP:
            self._handle_heartbeat_response(m)
        elif mt == MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)
        # Anything else at our own term is a stray (e.g. votes that arrive after we won).

    def _handle_append_response(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.hint_term > 0:
                # The follower has no entry of a term > hint_term at hint: find
                # where our log last has such a term (may skip a whole term).
                hint = self.log.find_conflict_by_term(hint, m.hint_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == PROBE:
            pr.become_replicate()
        elif pr.state == SNAPSHOT:
            if pr.match >= pr.pending_snapshot:
                pr.become_probe()
        else:
            pr.free_to(m.index)
        if self._maybe_commit():
            if self._role != _LEADER:
                return  # our own removal committed: we just stepped down
        elif was_paused:
            self._send_append(m.frm)
        # Pipelining: keep the window full.
        while self._send_append(m.frm, send_empty=False):
            pass
        if m.frm == self._lead_transferee and pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self._id, m.frm, self._term))

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == REPLICATE and len(pr.inflights) >= pr.max_inflight:
            # The window is full and the follower is alive: free one slot so a
            # lost append cannot stall the pipeline forever.
            pr.inflights.popleft()
        if pr.match < self.log.last_index:
            self._send_append(m.frm)
        if m.context and self._reads:
            self._read_ack(m.context, m.frm)

    def _maybe_commit(self) -> bool:
        """Advances commit to the highest index a majority has, if it is of our term."""
        prs = self._prs
        matches = sorted((prs[v].match for v in self._voters), reverse=True)
        q = matches[len(matches) // 2]
        log = self.log
        # §5.4.2 (Figure 8): only an entry of the current term is committed by
        # counting replicas; earlier ones commit with it.
        if q > log.committed and log.term(q) == self._term:
            log.committed = q
            self._bcast_commit = True
            self._after_commit()
            return True
        return False

    def _after_commit(self) -> None:
        if self._reads_waiting and self.log.term(self.log.committed) == self._term:
            waiting, self._reads_waiting = self._reads_waiting, []
            for ctx, frm in waiting:
                self._leader_read(ctx, frm)
        if self._id not in self._voter_set and self.log.committed >= self._pending_conf_index:
            # Our own removal is committed: hand over by going quiet. Flush the
            # commit first so the others learn it without waiting for a new leader.
            self._flush_bcast()
            self._become_follower(self._term, "")

    def _send_append(self, to: str, send_empty: bool = True) -> bool:
        """Sends the next batch (or the snapshot) to `to`; False when nothing was sent."""
        pr = self._prs[to]
        if pr.is_paused():
            return False
        log = self.log
        nxt = pr.next
        prev_term = log.term(nxt - 1)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        last = log.last_index
        if nxt <= last:
            hi = min(nxt + self.max_msg_entries, last + 1)
            ents = tuple(log.slice(nxt, hi))
            cap = self.max_msg_bytes
            if cap and len(ents) > 1:
                # Also bounded by size (etcd's MaxSizePerMsg): a few large entries
                # must not add up to a message the transport cannot carry. At
                # least one entry always goes, whatever its size.
                size = 0
                for i, e in enumerate(ents):
                    size += len(e.data)
                    if size > cap and i > 0:
                        ents = ents[:i]
                        break
        else:
            if not send_empty:
                return False
            ents = ()
        self._msgs.append(Message(_APP, self._id, to, self._term, prev_term, nxt - 1, ents, log.committed))
        if ents:
            pr.sent_entries(ents[-1].index)
        elif pr.state == PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        if not pr.recent_active or self._snapshot is None:
            # Do not ship a snapshot into a link we have not heard from lately.
            return False
        snap = self._snapshot
        pr.become_snapshot(snap.meta.index)
        self._msgs.append(Message(_SNAP, self._id, to, self._term, snapshot=snap))
        return True

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        committed = self.log.committed
        for v, pr in self._prs.items():
            if v != self._id:
                # Never tell a follower to commit beyond what it has acknowledged.
                c = pr.match if pr.match < committed else committed
                self._msgs.append(Message(_HB, self._id, v, self._term, commit=c, context=ctx))

    def _flush_bcast(self) -> None:
        """Sends what propose()/commit advances since the last Ready deferred (batching)."""
        commit = self._bcast_commit
        self._bcast_entries = self._bcast_commit = False
        for v in self._prs:
            if v == self._id:
                continue
            # A commit advance must reach followers even without new entries.
            if self._send_append(v, send_empty=commit):
                while self._send_append(v, send_empty=False):
                    pass

    # -- proposals ----------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self._role != _LEADER:
            raise NotLeader(self._leader, term=self._term)
        if self._lead_transferee:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")

    def propose(self, data: bytes) -> int:
        """Appends a NORMAL entry; returns its index. Replication starts at the next ready()."""
        self._check_can_propose()
        return self._leader_append(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Appends a single-server membership change; it takes effect now (see module docstring)."""
        self._check_can_propose()
        if self.log.committed < self._pending_conf_index:
            raise ConfChangePending("a membership change is still uncommitted")
        if cc.type == ConfChangeType.ADD and cc.node_id in self._voter_set:
            raise InvalidArgument(f"{cc.node_id} is already a voter")
        if cc.type == ConfChangeType.REMOVE:
            if cc.node_id not in self._voter_set:
                raise InvalidArgument(f"{cc.node_id} is not a voter")
            if len(self._voters) == 1:
                raise InvalidArgument("cannot remove the last voter")
        idx = self._leader_append(_CONF, cc.encode())
        self._pending_conf_index = idx
        return idx

    def _leader_append(self, etype: EntryType, data: bytes) -> int:
        idx = self.log.last_index + 1
        e = Entry(self._term, idx, etype, data)
        self._append([e])
        me = self._prs[self._id]
        me.match = idx
        me.next = idx + 1
        # Single voter: committed as soon as it is in our (to be persisted) log.
        if not self._maybe_commit():
            self._bcast_entries = True
        return idx

    def transfer_leadership(self, to: str) -> None:
        """Starts handing leadership to `to` (a voter); aborted after an election timeout."""
        if self._role != _LEADER:
            raise NotLeader(self._leader, term=self._term)
        if to == self._id or to not in self._voter_set or to == self._lead_transferee:
            return
        self._lead_transferee = to
        # The transfer gets one election timeout to complete.
        self._election_elapsed = 0
        pr = self._prs[to]
        if pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self._id, to, self._term))
        else:
            self._send_append(to)

    # -- linearizable reads ---------------------------------------------------------

    def read_index(self, context: bytes) -> None:
        """Requests a read index; a ReadState(index, context) appears in a later Ready.

        Serve the read once the state machine has applied `index`. `context`
        must be unique among outstanding requests.
        """
        if self._role == _LEADER:
            self._leader_read(context, self._id)
        elif self._leader:
            self._send(Message(MsgType.READ_INDEX, self._id, self._leader, self._term, context=context))
        else:
            raise NotLeader("", term=self._term)

    def _leader_read(self, ctx: bytes, frm: str) -> None:
        if self.log.term(self.log.committed) != self._term:
            # Until our no-op commits we do not know the true commit index.
            self._reads_waiting.append((ctx, frm))
            return
        if any(r.context == ctx for r in self._reads):
            return
        rr = ReadRequest(ctx, self.log.committed, frm, {self._id})
        if self._quorum() == 1 and self._id in self._voter_set:
            self._release_read(rr)
            return
        self._reads.append(rr)
        # Confirm we are still leader: a heartbeat round acknowledged by a majority.
        self._bcast_heartbeat(ctx)

    def _read_ack(self, ctx: bytes, frm: str) -> None:
        reads = self._reads
        for i, rr in enumerate(reads):
            if rr.context != ctx:
                continue
            rr.acks.add(frm)
            if sum(1 for v in self._voters if v in rr.acks) >= self._quorum():
                # Leadership confirmed after every earlier request was recorded,
                # so all of them are served too.
                for done in reads[: i + 1]:
                    self._release_read(done)
                del reads[: i + 1]
            return

    def _release_read(self, rr: ReadRequest) -> None:
        if rr.frm == self._id:
            self._read_states.append(ReadState(rr.index, rr.context))
        else:
            self._send(
                Message(
                    MsgType.READ_INDEX_RESP, self._id, rr.frm, self._term, index=rr.index, context=rr.context
                )
            )
