"""Raft's safety properties, checked incrementally after every simulator step.

- election safety: at most one leader per term, over the whole history;
- log matching: at most one entry per (index, term) ever persisted anywhere
  (which, with election safety, gives the Log Matching Property), plus a
  periodic pairwise comparison of whole logs;
- leader completeness: a new leader's log holds every entry known committed;
- state-machine safety: no two replicas apply different entries at an index,
  and their state-machine digests agree at every index (snapshots included);
- read linearizability: a ReadState's index covers every commit known
  before the read was requested.
"""

from __future__ import annotations

from controller.raft.types import Entry, EntryType, Role


class SafetyViolation(AssertionError):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


class Checker:
    __slots__ = ("leaders", "entries", "applied", "digests", "max_committed", "reads")

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> leader id
        self.entries: dict[tuple[int, int], Entry] = {}  # (index, term) -> entry persisted anywhere
        # Index 1 is the bootstrap snapshot (term 1, empty state) every initial member starts from.
        self.applied: dict[int, Entry] = {1: Entry(1, 1, EntryType.EMPTY)}  # index -> entry applied anywhere
        self.digests: dict[int, int] = {1: 0}  # index -> state-machine digest after applying it
        self.max_committed = 1  # highest index known committed (applied somewhere)
        self.reads: dict[bytes, int] = {}  # read context -> max_committed when requested

    def leader_seen(self, node_id: str, term: int, log) -> None:
        prev = self.leaders.get(term)
        if prev is None:
            self.leaders[term] = node_id
            self._leader_complete(node_id, term, log)
        elif prev != node_id:
            raise SafetyViolation("election safety", f"term {term} has leaders {prev} and {node_id}")

    def _leader_complete(self, node_id: str, term: int, log) -> None:
        # Entries at or below the leader's compaction point are covered by its
        # snapshot, whose digest is checked when installed/restored.
        lo = log.snap_index + 1
        applied = self.applied
        for i in range(lo, self.max_committed + 1):
            want = applied[i]
            t = log.term(i)
            if t != want.term:
                raise SafetyViolation(
                    "leader completeness",
                    f"{node_id} leads term {term} but has term {t} at committed index {i} (want {want.term})",
                )

    def persisted(self, node_id: str, ents: list[Entry]) -> None:
        seen = self.entries
        for e in ents:
            k = (e.index, e.term)
            o = seen.get(k)
            if o is None:
                seen[k] = e
            elif o != e:
                raise SafetyViolation("log matching", f"{node_id} persisted {e}, another replica has {o}")

    def applied_entry(self, node_id: str, e: Entry, digest: int) -> None:
        o = self.applied.get(e.index)
        if o is None:
            self.applied[e.index] = e
            self.digests[e.index] = digest
            if e.index > self.max_committed:
                self.max_committed = e.index
            return
        if o != e:
            raise SafetyViolation(
                "state machine safety", f"{node_id} applied {e} at {e.index}, another applied {o}"
            )
        if self.digests[e.index] != digest:
            raise SafetyViolation("state machine safety", f"{node_id} digest differs at {e.index}")

    def installed(self, node_id: str, index: int, digest: int) -> None:
        d = self.digests.get(index)
        if d is None:
            # A snapshot is only ever taken at an applied index.
            raise SafetyViolation(
                "state machine safety", f"{node_id} installed a snapshot at unapplied {index}"
            )
        if d != digest:
            raise SafetyViolation("state machine safety", f"{node_id} snapshot digest differs at {index}")

    def read_requested(self, ctx: bytes) -> None:
        self.reads[ctx] = self.max_committed

    def read_served(self, node_id: str, ctx: bytes, index: int) -> None:
        need = self.reads.get(ctx)
        if need is not None and index < need:
            raise SafetyViolation(
                "linearizable read", f"{node_id} read index {index} for {ctx!r} misses commit {need}"
            )

    def logs_match(self, cores) -> None:
        """Pairwise: where two logs share (index, term), they agree on everything before it."""
        cores = [c for c in cores if c is not None]
        for i, a in enumerate(cores):
            for b in cores[i + 1 :]:
                la, lb = a.log, b.log
                lo = max(la.snap_index, lb.snap_index) + 1
                hi = min(la.last_index, lb.last_index)
                matched = False
                for idx in range(hi, lo - 1, -1):
                    ea, eb = la.entries[idx - la.snap_index - 1], lb.entries[idx - lb.snap_index - 1]
                    if matched:
                        if ea != eb:
                            raise SafetyViolation(
                                "log matching", f"{a.id} and {b.id} differ at {idx}: {ea} vs {eb}"
                            )
                    elif ea.term == eb.term:
                        matched = True
                        if ea != eb:
                            raise SafetyViolation(
                                "log matching", f"{a.id} and {b.id} differ at {idx}: {ea} vs {eb}"
                            )


def is_leader(core) -> bool:
    return core.role == Role.LEADER
