"""The asyncio driver of one Raft replica: RaftNode ties core, WAL, snapshots and transport together.

One task runs the loop; everything that touches the core happens in it, so
the core needs no locks:

    tick on a timer / step inbound messages / take proposals and reads
    while core.has_ready():
        rd = core.ready()
        persist rd.snapshot, rd.entries, rd.hard_state   (one fsync: group commit)
        send rd.messages                                  (only after they are durable)
        install rd.snapshot, apply rd.committed_entries, resolve proposals
        core.advance(rd)
    snapshot + compact every `snapshot_entries` applied entries

Proposals, reads and messages that arrive while a batch is being fsynced
wait in the inbox and all go into the next Ready, which is what makes many
concurrent proposals cost one fsync. The fsync runs in a worker thread so the
event loop keeps serving RPCs, but the loop awaits it before doing anything
else with the core: ordering stays strict.

A proposal is resolved when the entry at its index is applied: with the
state machine's result if that entry has the proposal's term, with NotLeader
if another leader's entry took the index (so it never resolves with someone
else's result), with OutcomeUnknown if this replica loses leadership first or
the caller's timeout expires.

Snapshots: the data handed to the core (and sent to followers, and written
to <data_dir>/raft/snap) is an envelope: a JSON header with the member
address book followed by the state machine's own bytes, so that a replica
restored from a snapshot knows where its peers are. The core is compacted to
the *previous* snapshot, not the newest, so followers a little behind can
still catch up from the log instead of needing a whole snapshot, and the
WAL keeps what the older snapshot file needs should the newest be damaged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lepton.errors import InvalidArgument, NotLeader, OutcomeUnknown, Unavailable

from .core import RaftCore
from .snapshots import SnapshotStore
from .transport import RaftTransport
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    StateMachine,
)
from .wal import DEFAULT_SEGMENT_BYTES, WAL

log = logging.getLogger(__name__)

ROLE_NAMES = {
    Role.LEADER: "leader",
    Role.FOLLOWER: "follower",
    Role.CANDIDATE: "candidate",
    Role.PRE_CANDIDATE: "pre-candidate",
}
_ENVELOPE_MAGIC = b"LPSE"
# Messages a leader may send before its own fsync (see _handle_ready).
_LEADER_EARLY = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW})
_U32 = struct.Struct("<I")


@dataclass
class RaftConfig:
    id: str
    peers: dict[str, str]  # id -> raft address, including this replica
    data_dir: Path
    listen: str = ""  # default: peers[id]; port 0 allowed (see RaftNode.raft_port)
    tick_interval: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_entries: int = 10_000
    fsync: bool = True
    # Seconds the loop waits for more proposals to join a batch, only while
    # other proposals are in flight (see _loop). 0 disables it.
    batch_linger: float = 0.0005
    # Additions beyond the controller's contract:
    cluster_id: str = "lepton"  # refuses messages and data dirs of another cluster
    join: bool = False  # True: a new member waiting to be added (no bootstrap of `peers`)
    wal_segment_bytes: int = DEFAULT_SEGMENT_BYTES
    pre_vote: bool = True
    check_quorum: bool = True
    server_credentials: grpc.ServerCredentials | None = field(default=None, repr=False)
    channel_credentials: grpc.ChannelCredentials | None = field(default=None, repr=False)


def encode_envelope(members: dict[str, str], data: bytes) -> bytes:
    head = json.dumps({"members": members}, sort_keys=True).encode()
    return _ENVELOPE_MAGIC + _U32.pack(len(head)) + head + data


def decode_envelope(blob: bytes) -> tuple[dict[str, str], bytes] | None:
    """(member addresses, state machine bytes), or None for the core's bootstrap snapshot (no data)."""
    if not blob:
        return None
    if blob[:4] != _ENVELOPE_MAGIC:
        raise InvalidArgument("snapshot data is not a Lepton raft snapshot envelope")
    (n,) = _U32.unpack_from(blob, 4)
    head = json.loads(blob[8 : 8 + n])
    return dict(head["members"]), blob[8 + n :]


def _expire(fut: asyncio.Future, within: float) -> None:
    if not fut.done():
        fut.set_exception(OutcomeUnknown(f"no outcome within {within:g}s (it may still commit)"))


class _Pending:
    __slots__ = ("term", "fut")

    def __init__(self, term: int, fut: asyncio.Future) -> None:
        self.term = term
        self.fut = fut


class RaftNode:
    """One replica. Create, `await start()`, use, `await stop()`."""

    def __init__(self, cfg: RaftConfig, state_machine: StateMachine) -> None:
        if cfg.id not in cfg.peers and not cfg.join:
            raise InvalidArgument(f"peers must include this replica's own id {cfg.id!r}")
        self.cfg = cfg
        self.sm = state_machine
        self._core: RaftCore | None = None
        self._wal: WAL | None = None
        self._snaps: SnapshotStore | None = None
        self._transport: RaftTransport | None = None
        self._addresses: dict[str, str] = dict(cfg.peers)
        self._applied_voters: set[str] = set()
        self._inbox: list = []
        self._inbox_proposes = 0  # "propose" items in _inbox (drives batch_linger)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._failed: BaseException | None = None
        self._proposals: dict[int, _Pending] = {}
        self._reads: dict[bytes, asyncio.Future] = {}  # context -> future, until its ReadState
        self._read_waits: list[tuple[int, asyncio.Future]] = []  # (index, future) until applied
        self._read_seq = 0
        self._listeners: list[Callable[[bool, int], None]] = []
        self._was_leader = False
        self._leader = ""
        self._role = Role.FOLLOWER
        self._applied = 0
        self._applied_term = 0
        self._snap_index = 0
        self._prev_snapshot: Snapshot | None = None
        self._transfers: list[tuple[str, asyncio.Future]] = []
        self._synced: tuple[int, str] = (0, "")  # term and vote as last fsynced
        # Counters for benchmarks and status pages (exported by controller/observability).
        self.stats = {
            "readies": 0,
            "fsyncs": 0,
            "proposals": 0,
            "applied": 0,
            "leader_changes": 0,
            "late_ticks": 0,  # ticks that came more than half an election timeout late
        }
        # Called with the seconds each WAL fsync batch took (metrics); None = not measured.
        self.on_fsync: Callable[[float], None] | None = None
        # One thread for all WAL and snapshot I/O (made in start()): writes stay in
        # order, and the hand-off is cheaper than asyncio.to_thread's (no context copy).
        self._io: ThreadPoolExecutor | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        cfg = self.cfg
        raft_dir = Path(cfg.data_dir) / "raft"
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{cfg.id}")
        try:
            self._snaps = SnapshotStore(raft_dir / "snap", fsync=cfg.fsync)
            snap = await self._run_io(self._snaps.load_newest)
            self._wal = WAL(
                raft_dir / "wal",
                node_id=cfg.id,
                cluster_id=cfg.cluster_id,
                segment_bytes=cfg.wal_segment_bytes,
                fsync=cfg.fsync,
            )
            st = await self._run_io(
                self._wal.open, snap.meta.index if snap else 0, snap.meta.term if snap else 0
            )
        except BaseException:
            self._io.shutdown(wait=False)
            raise
        try:
            await self._start_with(snap, st)
        except BaseException:
            # Leave nothing open behind a failed start (e.g. the raft port is taken).
            if self._transport is not None:
                await self._transport.stop()
            self._wal.close()
            self._io.shutdown(wait=False)
            raise

    async def _start_with(self, snap: Snapshot | None, st) -> None:
        cfg = self.cfg
        if snap is not None:
            self._restore(snap)
            self._applied = self._snap_index = snap.meta.index
            self._applied_term = snap.meta.term
            self._applied_voters = set(snap.meta.conf.voters)
            self._prev_snapshot = snap
        restarted = snap is not None or bool(st.entries) or st.hard_state.term > 0
        self._core = RaftCore(
            cfg.id,
            () if cfg.join else tuple(cfg.peers),
            rand=random.Random(),
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            pre_vote=cfg.pre_vote,
            check_quorum=cfg.check_quorum,
            hard_state=st.hard_state if restarted else None,
            snapshot=snap,
            entries=st.entries,
        )
        self._learn_addresses(st.entries)
        self._synced = (st.hard_state.term, st.hard_state.vote)
        self._transport = RaftTransport(
            cfg.id,
            cfg.listen or cfg.peers.get(cfg.id, "127.0.0.1:0"),
            self._on_message,
            cluster_id=cfg.cluster_id,
            peers=self._addresses,
            server_credentials=cfg.server_credentials,
            channel_credentials=cfg.channel_credentials,
        )
        await self._transport.start()
        self._running = True
        log.info(
            "raft %s started: term %d, snapshot %d, %d log entries, raft port %d",
            cfg.id,
            st.hard_state.term,
            self._snap_index,
            len(st.entries),
            self._transport.port,
        )
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"raft-loop-{cfg.id}"),
            asyncio.create_task(self._ticker(), name=f"raft-tick-{cfg.id}"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        if not self._running and not self._tasks:
            return
        self._running = False
        self._wake.set()
        # The loop finishes the batch it is in (it may be inside an fsync) and exits.
        for t in self._tasks:
            if t.get_name().startswith("raft-tick"):
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self._transport is not None:
            await self._transport.stop()
        if self._wal is not None:
            await self._run_io(self._wal.close)
        if self._io is not None:
            self._io.shutdown(wait=False)
        self._fail_all(Unavailable(f"raft replica {self.cfg.id} stopped"))

    # ---- public properties ----

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def raft_port(self) -> int:
        return self._transport.port if self._transport else 0

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.role == Role.LEADER

    @property
    def leader_id(self) -> str:
        return self._core.leader if self._core else ""

    @property
    def term(self) -> int:
        return self._core.term if self._core else 0

    @property
    def commit_index(self) -> int:
        return self._core.commit if self._core else 0

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def applied_term(self) -> int:
        """Term of the entry at applied_index (what a snapshot taken now would be stamped with)."""
        return self._applied_term

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    @property
    def role(self) -> str:
        return ROLE_NAMES[self._core.role] if self._core else "follower"

    def members(self) -> dict[str, str]:
        voters = self._core.voters if self._core else tuple(self.cfg.peers)
        return {v: self._addresses.get(v, "") for v in voters}

    def peer_progress(self) -> dict[str, dict]:
        if not self.is_leader:
            return {}
        out = {}
        for v in self._core.voters:
            pr = self._core.progress(v)
            if pr is not None:
                out[v] = {"match": pr.match, "next": pr.next, "recent_active": pr.recent_active}
        return out

    def add_leadership_listener(self, cb: Callable[[bool, int], None]) -> None:
        self._listeners.append(cb)

    # ---- proposals, reads, membership ----

    def _check_usable(self) -> None:
        if not self._running:
            raise Unavailable(f"raft replica {self.cfg.id} is not running") from self._failed
        if self._core.role != Role.LEADER:
            raise NotLeader(self._core.leader, term=self._core.term)

    def _enqueue(self, item: tuple, within: float) -> asyncio.Future:
        """Queues `item` for the loop; the future resolves with its outcome or OutcomeUnknown after `within`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inbox.append((*item, fut))
        if item[0] == "propose":
            self._inbox_proposes += 1
        self._wake.set()
        # A timer rather than wait_for(): one handle per proposal instead of a
        # wrapper future, which shows at thousands of proposals per second.
        timer = loop.call_later(within, _expire, fut, within)
        fut.add_done_callback(lambda _f: timer.cancel())
        return fut

    async def _submit(self, item: tuple, within: float) -> object:
        return await self._enqueue(item, within)

    async def propose(self, data: bytes, timeout: float = 5.0) -> object:  # noqa: ASYNC109
        """Replicates `data`; returns state_machine.apply()'s result once applied here."""
        self._check_usable()
        return await self._submit(("propose", bytes(data)), timeout)

    def propose_nowait(self, data: bytes, timeout: float = 5.0) -> asyncio.Future:
        """propose() without a coroutine: the future resolves as propose() would return or raise.

        For servers that pipeline many proposals from one stream (a task per
        proposal costs more than the proposal itself does in the core).
        """
        self._check_usable()
        return self._enqueue(("propose", bytes(data)), timeout)

    async def read_index(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Returns once everything committed at call time is applied here (linearizable read)."""
        self._check_usable()
        self._read_seq += 1
        ctx = f"{self.cfg.id}/{self._read_seq}".encode()
        await self._submit(("read", ctx), timeout)

    async def add_member(self, node_id: str, raft_address: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        self._check_usable()
        cc = ConfChange(ConfChangeType.ADD, node_id, raft_address.encode())
        await self._submit(("conf", cc), timeout)

    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        self._check_usable()
        await self._submit(("conf", ConfChange(ConfChangeType.REMOVE, node_id)), timeout)

    async def transfer_leadership(self, to_id: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Hands leadership to `to_id` and waits until this replica has seen it happen."""
        self._check_usable()
        if to_id not in self._core.voters:
            raise InvalidArgument(f"{to_id} is not a voter")
        if to_id == self.cfg.id:
            return
        await self._submit(("transfer", to_id), timeout)

    # ---- the loop ----

    def _on_message(self, m: Message) -> None:
        self._inbox.append(("step", m, None))
        self._wake.set()

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.tick_interval
        # Heartbeats ride on ticks: a tick this late means followers may already
        # be counting down to an election (etcd warns the same way: "leader
        # failed to send out heartbeat on time").
        warn_after = interval * max(1, self.cfg.election_ticks // 2)
        last_warn = -1e9
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            late = now - due
            due = now + interval
            if late > warn_after:
                self.stats["late_ticks"] += 1
                if self.is_leader and now - last_warn > 10:
                    last_warn = now
                    log.warning(
                        "raft %s: the event loop ran %.0f ms late (heartbeats are due every %.0f ms): "
                        "this leader is overloaded and followers may start an election",
                        self.cfg.id,
                        late * 1000,
                        interval * self.cfg.heartbeat_ticks * 1000,
                    )
            self._inbox.append(("tick", None, None))
            self._wake.set()

    async def _loop(self) -> None:
        core = self._core
        try:
            while self._running:
                await self._wake.wait()
                # One turn of the event loop lets RPC handlers that are already
                # runnable queue their proposals too: bigger batches, fewer fsyncs.
                await asyncio.sleep(0)
                if self.cfg.batch_linger > 0 and self._proposals and self._inbox_proposes:
                    # Proposals are arriving while others are still in flight: many
                    # proposers are active, so wait a moment for more to join this
                    # batch (fewer, fuller batches: fewer fsyncs and stream writes on
                    # every replica). A lone proposer never waits (nothing in flight).
                    await asyncio.sleep(self.cfg.batch_linger)
                self._wake.clear()
                if not self._running:
                    break  # stop(): take nothing more into the core
                self._drain_inbox()
                while core.has_ready() and self._running:
                    rd = core.ready()
                    await self._handle_ready(rd)
                    core.advance(rd)
                    await self._after_advance()
                    self._drain_inbox()
                self._pending_transfer_done()
        except Exception as e:  # storage failure or a bug: stop serving rather than diverge
            log.exception("raft %s: loop failed; this replica stops", self.cfg.id)
            self._failed = e
            self._running = False
            self._fail_all(Unavailable(f"raft replica {self.cfg.id} failed: {e}"))

    def _drain_inbox(self) -> None:
        core = self._core
        inbox, self._inbox = self._inbox, []
        self._inbox_proposes = 0
        for kind, arg, fut in inbox:
            if kind == "step":
                core.step(arg)
            elif kind == "tick":
                core.tick()
            elif fut is not None and fut.done():
                continue  # the caller gave up before we got to it
            elif kind == "propose" or kind == "conf":
                try:
                    idx = core.propose(arg) if kind == "propose" else core.propose_conf_change(arg)
                except Exception as e:
                    fut.set_exception(self._translate(e))
                else:
                    self._proposals[idx] = _Pending(core.term, fut)
                    self.stats["proposals"] += 1
            elif kind == "read":
                if core.role != Role.LEADER:
                    fut.set_exception(NotLeader(core.leader, term=core.term))
                    continue
                try:
                    core.read_index(arg)
                except Exception as e:
                    fut.set_exception(self._translate(e))
                else:
                    self._reads[arg] = fut
            elif kind == "transfer":
                try:
                    core.transfer_leadership(arg)
                except Exception as e:
                    fut.set_exception(self._translate(e))
                else:
                    self._transfers.append((arg, fut))

    def _pending_transfer_done(self) -> bool:
        if not self._transfers:
            return False
        still = []
        for to, fut in self._transfers:
            if fut.done():
                continue
            if self._core.leader == to:
                fut.set_result(None)
            else:
                still.append((to, fut))
        self._transfers = still
        return True

    def _translate(self, e: Exception) -> Exception:
        if isinstance(e, NotLeader):
            return NotLeader(e.leader_id, term=e.term)
        return e

    async def _handle_ready(self, rd: Ready) -> None:
        self.stats["readies"] += 1
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader, rd.soft_state.role)
        self._learn_addresses(rd.entries)
        msgs = rd.messages
        if msgs and self._core.role == Role.LEADER:
            # A leader may replicate entries before its own copy is durable (Raft
            # thesis 10.2.1, etcd does the same): its messages do not vouch for
            # anything it has not persisted, and the acks that could commit an
            # entry are stepped only after this batch's fsync (after advance()),
            # so no commit ever counts the leader's undurable entries.
            early = [m for m in msgs if m.type in _LEADER_EARLY]
            if early:
                self._transport.send(early)
                msgs = [m for m in msgs if m.type not in _LEADER_EARLY]
        applied_early = False
        if (
            rd.committed_entries
            and rd.snapshot is None
            and (not rd.entries or rd.committed_entries[-1].index < rd.entries[0].index)
        ):
            # Everything committed here is already durable in our own log (it
            # precedes this batch's new entries), so apply it before waiting for
            # this batch's fsync: proposers get their results one fsync sooner,
            # and their next proposals join the batch after this one.
            for e in rd.committed_entries:
                self._apply(e)
            applied_early = True
        # 1. persist (one fsync for the whole batch)
        if rd.snapshot is not None:
            await self._run_io(self._snaps.save, rd.snapshot)
        hs = rd.hard_state
        if rd.entries or rd.snapshot is not None or (hs is not None and (hs.term, hs.vote) != self._synced):
            marker = (rd.snapshot.meta.index, rd.snapshot.meta.term) if rd.snapshot is not None else None
            t0 = time.perf_counter()
            await self._run_io(self._wal.save, rd.entries, hs, marker)
            self.stats["fsyncs"] += 1
            if self.on_fsync is not None:
                self.on_fsync(time.perf_counter() - t0)
            if hs is not None:
                self._synced = (hs.term, hs.vote)
        elif hs is not None:
            # Only the commit index moved: it can be relearnt from the leader after
            # a crash, so it rides along unsynced until the next fsync (as in etcd).
            self._wal.write(hard_state=hs)
        # 2. send
        if msgs:
            self._transport.send(msgs)
        # 3. apply
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if not applied_early:
            for e in rd.committed_entries:
                self._apply(e)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.context, None)
            if fut is not None and not fut.done():
                self._read_waits.append((rs.index, fut))

    def _run_io(self, fn, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _after_advance(self) -> None:
        if self._read_waits:
            still = []
            for idx, fut in self._read_waits:
                if fut.done():
                    continue
                if idx <= self._applied:
                    fut.set_result(None)
                else:
                    still.append((idx, fut))
            self._read_waits = still
        if self._applied - self._snap_index >= self.cfg.snapshot_entries:
            await self._take_snapshot()

    def _on_soft_state(self, leader: str, role: Role) -> None:
        if leader != self._leader:
            log.info("raft %s: leader is now %r (term %d)", self.cfg.id, leader, self._core.term)
            if leader:
                self.stats["leader_changes"] += 1
        self._leader, self._role = leader, role
        self._pending_transfer_done()
        leading = role == Role.LEADER
        if leading == self._was_leader:
            return
        self._was_leader = leading
        log.info(
            "raft %s: %s leadership at term %d",
            self.cfg.id,
            "acquired" if leading else "lost",
            self._core.term,
        )
        if not leading:
            # Entries appended while we led may or may not commit under the next leader.
            for p in self._proposals.values():
                if not p.fut.done():
                    p.fut.set_exception(OutcomeUnknown("leadership lost before the proposal was applied"))
            self._proposals.clear()
            for fut in [*self._reads.values(), *(f for _, f in self._read_waits)]:
                if not fut.done():
                    fut.set_exception(NotLeader(leader, term=self._core.term))
            self._reads.clear()
            self._read_waits = []
        for cb in list(self._listeners):
            try:
                cb(leading, self._core.term)
            except Exception:
                log.exception("leadership listener %r failed", cb)

    def _learn_addresses(self, entries) -> None:
        """Conf changes take effect when appended: the transport needs new members' addresses now."""
        changed = False
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                if cc.type == ConfChangeType.ADD and cc.context:
                    addr = cc.context.decode()
                    if self._addresses.get(cc.node_id) != addr:
                        self._addresses[cc.node_id] = addr
                        changed = True
        if changed and self._transport is not None:
            self._schedule_peer_update()

    def _schedule_peer_update(self) -> None:
        peers = dict(self._addresses)
        task = asyncio.create_task(self._transport.set_peers(peers))
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _apply(self, e: Entry) -> None:
        if e.index <= self._applied:
            return  # covered by a snapshot installed in this same batch
        pending = self._proposals.pop(e.index, None)
        result: object = None
        error: Exception | None = None
        if e.type == EntryType.NORMAL:
            try:
                result = self.sm.apply(e.index, e.term, e.data)
            except Exception as exc:  # a deterministic rejection, reported to the proposer
                error = exc
        elif e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            if cc.type == ConfChangeType.ADD:
                self._applied_voters.add(cc.node_id)
            else:
                self._applied_voters.discard(cc.node_id)
                if cc.node_id == self.cfg.id:
                    log.warning("raft %s: removed from the cluster at index %d", self.cfg.id, e.index)
        self._applied = e.index
        self._applied_term = e.term
        self.stats["applied"] += 1
        if pending is not None and not pending.fut.done():
            if pending.term != e.term:
                pending.fut.set_exception(NotLeader(self._core.leader, term=self._core.term))
            elif error is not None:
                pending.fut.set_exception(error)
            else:
                pending.fut.set_result(result)

    def _restore(self, snap: Snapshot) -> None:
        env = decode_envelope(snap.data)
        if env is None:
            # The core's bootstrap snapshot (index 1, no data): the state machine
            # is the empty one it already is; addresses come from cfg.peers.
            return
        members, data = env
        self._addresses.update(members)
        self.sm.restore(data)

    def _install_snapshot(self, snap: Snapshot) -> None:
        self._restore(snap)
        self._applied = self._snap_index = snap.meta.index
        self._applied_term = snap.meta.term
        self._applied_voters = set(snap.meta.conf.voters)
        self._prev_snapshot = snap
        if snap.data:
            log.info("raft %s: installed snapshot at index %d from the leader", self.cfg.id, snap.meta.index)
        else:
            log.info("raft %s: bootstrapped with voters %s", self.cfg.id, ", ".join(snap.meta.conf.voters))
        self._schedule_peer_update()
        # Proposals at or below the snapshot can no longer be matched to their entries.
        for idx in [i for i in self._proposals if i <= snap.meta.index]:
            p = self._proposals.pop(idx)
            if not p.fut.done():
                p.fut.set_exception(OutcomeUnknown("replaced by a snapshot before it was applied here"))

    async def _take_snapshot(self) -> None:
        """Snapshots the state machine at the applied index; compacts core and WAL one snapshot behind."""
        members = {v: self._addresses.get(v, "") for v in sorted(self._applied_voters)}
        data = encode_envelope(members, self.sm.snapshot())
        snap = Snapshot(
            SnapshotMeta(self._applied, self._applied_term, ConfState(tuple(sorted(self._applied_voters)))),
            data,
        )
        # The WAL may only be compacted once the snapshot file is durable.
        await self._run_io(self._snaps.save, snap)
        prev = self._prev_snapshot
        self._prev_snapshot = snap
        self._snap_index = snap.meta.index
        if prev is not None:
            if prev.meta.index > self._core.log.snap_index:
                self._core.compact(prev.meta.index, prev.data)
            # Also after a snapshot received from the leader (the core is already there).
            await self._run_io(self._wal.compact, prev.meta.index)
        log.info("raft %s: snapshot at index %d (%d bytes)", self.cfg.id, snap.meta.index, len(data))

    def _fail_all(self, err: Exception) -> None:
        for p in self._proposals.values():
            if not p.fut.done():
                p.fut.set_exception(err)
        self._proposals.clear()
        for _, _arg, fut in self._inbox:
            if fut is not None and not fut.done():
                fut.set_exception(err)
        self._inbox = []
        self._inbox_proposes = 0
        for fut in [*self._reads.values(), *(f for _, f in self._read_waits)]:
            if not fut.done():
                fut.set_exception(err)
        self._reads.clear()
        self._read_waits = []
        for _, fut in self._transfers:
            if not fut.done():
                fut.set_exception(err)
        self._transfers = []
