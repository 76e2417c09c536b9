"""The bounded, replicated event log of ClusterState.

Events are produced only inside apply, stamped with the command's time and
the entry's term, and numbered by a counter that is part of the snapshot, so
every replica holds the same events with the same sequence numbers. Only
the newest MAX_EVENTS are kept; `since()` is what WatchEvents replays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from lepton.v1 import types_pb2

MAX_EVENTS = 10_000


class EventLog:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._events: deque[types_pb2.Event] = deque(maxlen=max_events)
        self.next_seq = 1  # sequence numbers start at 1 so that since_seq=0 means "from the start"

    def emit(
        self,
        time_ms: int,
        term: int,
        type_: str,
        message: str,
        *,
        node_id: str = "",
        job_id: str = "",
        task_id: str = "",
    ) -> types_pb2.Event:
        ev = types_pb2.Event(
            seq=self.next_seq,
            time_ms=time_ms,
            type=type_,
            message=message,
            node_id=node_id,
            job_id=job_id,
            task_id=task_id,
            term=term,
        )
        self.next_seq += 1
        self._events.append(ev)
        return ev

    def since(
        self,
        since_seq: int = 0,
        types: Iterable[str] = (),
        node_id: str = "",
        job_id: str = "",
        limit: int = 0,
    ) -> list[types_pb2.Event]:
        """Copies of retained events with seq > since_seq matching every filter.

        types are prefixes ("node." or "task.placed"); limit > 0 keeps the
        newest `limit` matches (a backlog cap for watchers).
        """
        prefixes = tuple(types)
        out = []
        for ev in self._events:
            if ev.seq <= since_seq:
                continue
            if prefixes and not ev.type.startswith(prefixes):
                continue
            if node_id and ev.node_id != node_id:
                continue
            if job_id and ev.job_id != job_id:
                continue
            out.append(ev)
        if limit > 0:
            out = out[-limit:]
        return [_copy(ev) for ev in out]

    def all(self) -> list[types_pb2.Event]:
        """The retained events themselves (for snapshots; do not mutate)."""
        return list(self._events)

    def load(self, events: Iterable[types_pb2.Event], next_seq: int) -> None:
        self._events.clear()
        for ev in events:
            self._events.append(_copy(ev))
        self.next_seq = next_seq

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def __len__(self) -> int:
        return len(self._events)


def _copy(ev: types_pb2.Event) -> types_pb2.Event:
    out = types_pb2.Event()
    out.CopyFrom(ev)
    return out
