"""Snapshot format of ClusterState: the Store to and from a ClusterSnapshot message.

The snapshot holds everything replicated (members, leader, nodes, jobs,
tasks, retained events, the event counter, the request-id index and the
applied index/term) in insertion order, which is the order the command log
produced. Serialisation is deterministic, so equal states give equal bytes
and `digest()` can hash them. Derived indexes are not stored; restore
rebuilds them.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError

from lepton.errors import FailedPrecondition
from lepton.v1 import commands_pb2

from .store import Store

SNAPSHOT_FORMAT_VERSION = 1


def to_message(store: Store) -> commands_pb2.ClusterSnapshot:
    snap = commands_pb2.ClusterSnapshot(
        format_version=SNAPSHOT_FORMAT_VERSION,
        applied_index=store.applied_index,
        applied_term=store.applied_term,
        leader_id=store.leader_id,
        leader_api_address=store.leader_api_address,
        leader_term=store.leader_term,
        next_event_seq=store.events.next_seq,
    )
    snap.members.extend(store.members.values())
    snap.nodes.extend(store.nodes.values())
    snap.jobs.extend(store.jobs.values())
    snap.tasks.extend(store.tasks.values())
    snap.events.extend(store.events.all())
    for rid, jid in store.request_ids.items():
        snap.request_ids.add(request_id=rid, job_id=jid)
    return snap


def encode(store: Store) -> bytes:
    return to_message(store).SerializeToString(deterministic=True)


def digest(store: Store) -> str:
    """sha256 of the replicated content, leaving out the applied index/term.

    Two replicas with the same entities, events and counters compare equal
    even if one also applied (rejected) no-op entries; compare applied_index
    separately where that matters.
    """
    snap = to_message(store)
    snap.applied_index = 0
    snap.applied_term = 0
    return hashlib.sha256(snap.SerializeToString(deterministic=True)).hexdigest()


def decode(data: bytes) -> Store:
    """A fresh Store from snapshot bytes; raises FailedPrecondition for unusable data."""
    try:
        snap = commands_pb2.ClusterSnapshot.FromString(data)
    except DecodeError as e:
        raise FailedPrecondition(f"cluster snapshot cannot be decoded ({e})") from None
    if snap.format_version != SNAPSHOT_FORMAT_VERSION:
        raise FailedPrecondition(
            f"cluster snapshot format {snap.format_version} is not supported (expected {SNAPSHOT_FORMAT_VERSION})"
        )
    store = Store()
    store.applied_index = snap.applied_index
    store.applied_term = snap.applied_term
    store.leader_id = snap.leader_id
    store.leader_api_address = snap.leader_api_address
    store.leader_term = snap.leader_term
    for m in snap.members:
        store.members[m.id] = _copy(m)
    for n in snap.nodes:
        store.nodes[n.node.id] = _copy(n)
    for j in snap.jobs:
        store.jobs[j.id] = _copy(j)
    for t in snap.tasks:
        store.tasks[t.task.id] = _copy(t)
    for e in snap.request_ids:
        store.request_ids[e.request_id] = e.job_id
    store.events.load(snap.events, snap.next_event_seq or 1)
    store.rebuild_indexes()
    return store


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out
