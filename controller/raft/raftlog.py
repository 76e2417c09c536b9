"""The Raft core's in-memory log: a compaction point (the latest snapshot) plus entries after it.

One Python list holds every entry after the snapshot; `stable` splits it into
the part storage already persisted and the unstable tail that the next Ready
must hand to the driver. Keeping both in one list (rather than etcd's
separate Storage + unstable structs) is what makes term lookups, slicing for
AppendEntries and conflict detection a single index computation each -- the
simulator runs millions of them. Pure: no I/O, no clock.
"""

from __future__ import annotations

from .types import Entry, Snapshot


class RaftLog:
    """Entries (snap_index, last_index], with the term of snap_index remembered.

    Invariants: snap_index <= applied <= committed <= last_index (applied may
    lag behind snap_index only while a received snapshot waits to be
    installed); stable <= last_index; entries[i].index == snap_index + 1 + i.
    """

    __slots__ = ("entries", "snap_index", "snap_term", "stable", "committed", "applied", "pending_snapshot")

    def __init__(self, snapshot: Snapshot | None, entries: list[Entry]) -> None:
        meta = snapshot.meta if snapshot is not None else None
        self.snap_index = meta.index if meta else 0
        self.snap_term = meta.term if meta else 0
        # Storage may hand back entries at or before the snapshot (compaction of
        # the WAL lags the snapshot); they are covered by the snapshot.
        self.entries: list[Entry] = [e for e in entries if e.index > self.snap_index]
        if self.entries and self.entries[0].index != self.snap_index + 1:
            raise ValueError(f"log gap: snapshot at {self.snap_index}, first entry {self.entries[0].index}")
        self.stable = self.last_index
        self.committed = self.snap_index
        self.applied = self.snap_index
        # A snapshot received from the leader that the driver has yet to persist and install.
        self.pending_snapshot: Snapshot | None = None

    # -- queries -----------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snap_index + 1

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of the entry at `index`, or None when compacted away or beyond the end."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if off < 0 or off > len(self.entries):
            return None
        return self.entries[off - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        lt = self.last_term
        return last_term > lt or (last_term == lt and last_index >= self.last_index)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; lo must be > snap_index."""
        base = self.snap_index + 1
        return self.entries[lo - base : hi - base]

    def unstable(self) -> list[Entry]:
        return self.entries[self.stable - self.snap_index :]

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= `term` (or the compaction point).

        Used both by a follower building a reject hint and by the leader
        consuming one: every entry in between has a term the other side does
        not have at that position, so skipping them all is safe (etcd's
        findConflictByTerm; the thesis' "fast backtracking").
        """
        index = min(index, self.last_index)
        base = self.snap_index + 1
        ents = self.entries
        while index >= base and ents[index - base].term > term:
            index -= 1
        return index

    # -- mutations ---------------------------------------------------------------

    def append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        """Appends, first truncating any suffix from ents[0].index (callers checked for conflicts)."""
        after = ents[0].index
        last = self.snap_index + len(self.entries)
        if after <= last:
            if after <= self.committed:
                raise AssertionError(f"truncating committed entry {after} (committed {self.committed})")
            del self.entries[after - self.snap_index - 1 :]
            # The truncated tail may have been persisted: storage rewrites it
            # when the next Ready's entries start at `after`.
            if self.stable >= after:
                self.stable = after - 1
        elif after != last + 1:
            raise AssertionError(f"log gap: appending {after} after {last}")
        self.entries.extend(ents)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise AssertionError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replaces the whole log by a snapshot received from the leader."""
        self.entries = []
        self.snap_index = snapshot.meta.index
        self.snap_term = snapshot.meta.term
        self.stable = self.snap_index
        self.committed = self.snap_index
        self.pending_snapshot = snapshot

    def compact(self, index: int) -> None:
        """Drops entries up to and including `index` (the application snapshotted there)."""
        t = self.term(index)
        if t is None:
            raise ValueError(f"cannot compact at {index}: not in the log")
        del self.entries[: index - self.snap_index]
        self.snap_index = index
        self.snap_term = t
