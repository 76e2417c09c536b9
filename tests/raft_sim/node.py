"""One simulated replica: a RaftCore, the "disk" that survives a crash, and a toy state machine.

SimStorage is what a real driver's WAL + snapshot files would hold: only what
a Ready handed over and the driver "fsynced" survives a crash. The state
machine folds applied commands into a CRC chain so that two replicas (or a
replica and a snapshot) can be compared in O(1) at every index.
"""

from __future__ import annotations

import zlib

from controller.raft.core import RaftCore
from controller.raft.types import Entry, EntryType, HardState, Ready, Snapshot


class SimStorage:
    """Persisted state of one replica: hard state, latest snapshot, entries after it."""

    __slots__ = ("hard", "snapshot", "entries")

    def __init__(self) -> None:
        self.hard: HardState | None = None
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    def persist(self, rd: Ready) -> None:
        """Step 1 of the Ready contract, atomically (one fsync for the batch)."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            si = rd.snapshot.meta.index
            self.entries = [e for e in self.entries if e.index > si]
            # A snapshot received from the leader replaces a log that disagrees with it.
            if self.entries and self.entries[0].index != si + 1:
                self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = self.snapshot.meta.index + 1 if self.snapshot is not None else 1
            del self.entries[max(0, first - base) :]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.hard = HardState(hs.term, hs.vote, hs.commit)

    def save_snapshot(self, snap: Snapshot) -> None:
        """The application's own snapshot (compaction): drop the log it covers."""
        self.snapshot = snap
        si = snap.meta.index
        self.entries = [e for e in self.entries if e.index > si]


class SimNode:
    """A replica's process: alive or crashed; its core is rebuilt from storage on restart."""

    __slots__ = ("id", "storage", "core", "alive", "applied", "digest", "removed", "inflight", "_opts")

    def __init__(self, node_id: str, voters: tuple[str, ...], opts: dict) -> None:
        self.id = node_id
        self.storage = SimStorage()
        self._opts = opts
        self.alive = True
        self.removed = False
        self.inflight: Ready | None = None  # persisted, not yet sent/applied/advanced
        self.core = RaftCore(node_id, voters, **opts)
        self.applied = 0  # state machine's applied index
        self.digest = 0  # CRC chain over applied NORMAL commands

    def crash(self) -> None:
        """Loses the core's memory: unpersisted entries, unsent messages, unapplied state."""
        self.alive = False
        self.inflight = None
        self.core = None  # type: ignore[assignment]

    def restart(self) -> None:
        st = self.storage
        self.core = RaftCore(
            self.id, (), hard_state=st.hard, snapshot=st.snapshot, entries=list(st.entries), **self._opts
        )
        self.alive = True
        # The state machine restarts from the latest snapshot and replays the committed log.
        self.applied, self.digest = (
            decode_sm(st.snapshot.data, st.snapshot.meta.index) if st.snapshot is not None else (0, 0)
        )

    def apply(self, e: Entry) -> None:
        if e.type == EntryType.NORMAL:
            self.digest = zlib.crc32(e.data, self.digest)
        self.applied = e.index

    def install(self, snap: Snapshot) -> None:
        self.applied, self.digest = decode_sm(snap.data, snap.meta.index)
        assert self.applied == snap.meta.index, (self.applied, snap.meta)

    def sm_snapshot(self) -> bytes:
        return f"{self.applied}:{self.digest}".encode()


def decode_sm(data: bytes, index: int = 0) -> tuple[int, int]:
    if not data:
        return index, 0  # the bootstrap snapshot: the empty state machine
    a, d = data.split(b":")
    return int(a), int(d)
