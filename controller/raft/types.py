"""Plain data types shared by the Raft core, storage, transport and driver.

These are the contract between the layers: the core consumes Messages and
produces Ready batches; storage persists HardState, Entries and Snapshots;
the transport converts Messages to and from protobuf (raft.proto). They are
slotted dataclasses rather than protobuf objects because the core and the
deterministic simulator handle millions of them and attribute access on
plain Python objects is several times cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol


class MsgType(IntEnum):
    VOTE = 1
    VOTE_RESP = 2
    PRE_VOTE = 3
    PRE_VOTE_RESP = 4
    APP = 5  # AppendEntries (also carries commit)
    APP_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9  # InstallSnapshot; the transport chunks snapshot.data on the wire
    SNAP_STATUS = 10  # local only: the transport reports a snapshot send finished/failed
    TIMEOUT_NOW = 11  # leadership transfer: start an election immediately
    READ_INDEX = 12  # follower -> leader: ask for a read index (context identifies it)
    READ_INDEX_RESP = 13
    UNREACHABLE = 14  # local only: transport says a peer is unreachable


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data = ConfChange.encode()
    EMPTY = 2  # the no-op a new leader appends to commit entries of earlier terms


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(slots=True, frozen=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True)
class HardState:
    term: int = 0
    vote: str = ""  # node id voted for in `term`, "" = none
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ConfState:
    voters: tuple[str, ...] = ()


class ConfChangeType(IntEnum):
    ADD = 1
    REMOVE = 2


@dataclass(slots=True, frozen=True)
class ConfChange:
    """Single-server membership change: add or remove one voter."""

    type: ConfChangeType
    node_id: str
    context: bytes = b""  # e.g. the new member's raft address, for the transport

    def encode(self) -> bytes:
        nid = self.node_id.encode()
        return bytes([int(self.type), len(nid)]) + nid + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        t, n = data[0], data[1]
        return ConfChange(ConfChangeType(t), data[2 : 2 + n].decode(), data[2 + n :])


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(slots=True, frozen=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


@dataclass(slots=True)
class Message:
    type: MsgType
    frm: str
    to: str
    term: int = 0
    log_term: int = 0  # APP: term of entry at `index`; VOTE: last log term
    index: int = 0  # APP: index preceding `entries`; VOTE: last log index; APP_RESP: match/last index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APP_RESP reject: follower's hint index (conflict optimisation)
    hint_term: int = 0  # APP_RESP reject: term at reject_hint in follower's log
    snapshot: Snapshot | None = None
    context: bytes = b""  # READ_INDEX / heartbeat context, transfer marker for VOTE


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once applied index >= index."""

    index: int
    context: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    leader: str  # "" when unknown
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver, handled strictly in this order:

    1. persist `snapshot` (if any), then `entries` (append, truncating any
       conflicting suffix from entries[0].index), then `hard_state` (if not
       None) -- one fsync for the batch;
    2. send `messages` (only after step 1: votes and acks depend on it);
    3. apply `committed_entries` to the state machine (and install `snapshot`);
    4. call core.advance(ready).
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


class StateMachine(Protocol):
    """What sits on Raft. apply() must be deterministic: no clock, randomness or I/O."""

    def apply(self, index: int, term: int, data: bytes) -> object:
        """Applies one committed NORMAL entry and returns the proposer's result."""

    def snapshot(self) -> bytes:
        """Serialises the whole state (as of the last applied index)."""

    def restore(self, data: bytes) -> None:
        """Replaces the whole state with a snapshot's data."""
