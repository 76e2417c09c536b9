"""What a Raft leader knows about each follower's log: match/next indexes and the flow-control state.

Modelled on etcd raft's tracker package. A follower is in one of three states:
- PROBE: the leader does not know where the logs diverge; it sends one
  AppendEntries at a time (`probe_sent` pauses it until an answer or a
  heartbeat response) and walks `next` back using the follower's hints;
- REPLICATE: logs match up to `match`; the leader pipelines batches
  optimistically, advancing `next` on send, bounded by an in-flight window;
- SNAPSHOT: the entries the follower needs were compacted; a snapshot is on
  its way and nothing else is sent until the transport reports the outcome
  (SNAP_STATUS) or the follower acknowledges the snapshot's index.
Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


PROBE = ProgressState.PROBE
REPLICATE = ProgressState.REPLICATE
SNAPSHOT = ProgressState.SNAPSHOT


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "pending_snapshot",
        "recent_active",
        "inflights",
        "max_inflight",
    )

    def __init__(self, next_index: int, max_inflight: int, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        # check-quorum: set by any message from the peer, cleared every election timeout.
        # Starts True so a fresh leader (or a newly added peer) gets a full timeout to hear back.
        self.recent_active = True
        # last index of each AppendEntries in flight, oldest first (REPLICATE only)
        self.inflights: deque[int] = deque()
        self.max_inflight = max_inflight

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next} "
            f"inflight={len(self.inflights)} probe_sent={self.probe_sent} pending_snap={self.pending_snapshot})"
        )

    def is_paused(self) -> bool:
        st = self.state
        if st == PROBE:
            return self.probe_sent
        if st == REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        # Coming out of SNAPSHOT the follower has (or will have) the snapshot:
        # resume right after it rather than probing from match again.
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, n: int) -> bool:
        """Handles an acknowledgement up to n; False when it is stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handles a rejection of the append whose previous index was `rejected`.

        `match_hint` is the leader's best guess (from the follower's hint) of
        the last index that may match. Returns False for a stale rejection.
        """
        if self.state == REPLICATE:
            # Rejections of indexes we already know match are from reordered
            # or duplicated old messages.
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # In PROBE only the answer to the outstanding probe counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last: int) -> None:
        """Records an AppendEntries carrying entries up to `last`."""
        if self.state == REPLICATE:
            self.next = last + 1
            self.inflights.append(last)
        else:
            self.probe_sent = True

    def free_to(self, index: int) -> None:
        inf = self.inflights
        while inf and inf[0] <= index:
            inf.popleft()
