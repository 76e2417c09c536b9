"""Backup and restore of the whole cluster state (docs/backup.md).

Save (`ControlService.SaveSnapshot`, used by `lepton-ctl cluster snapshot
save`): on the leader, after a Raft read barrier, the replica's applied
ClusterState is serialised in the same event-loop step in which its applied
index and term are read, so the three agree and the copy includes every write
acknowledged before the call (linearizable). It leaves as a header chunk
followed by data chunks; the client writes the file (lepton/backup.py).

Restore (`lepton-controller --restore FILE --data-dir DIR`): seeds an empty
data directory so that the replica starts from that state. The state goes in
as the replica's Raft snapshot at the backup's index i and term t, with the
configured --peers as voters, and the WAL gets a hard state (term t, commit
i). Every replica of the new cluster is seeded from the same file with the
same peers, so all start with identical logs ending at i; the first leader
is elected in a term above t and appends from i + 1. The old cluster's
history (log entries, terms, membership) is deliberately not carried over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from controller.raft.node import encode_envelope
from controller.raft.snapshots import SnapshotStore
from controller.raft.types import ConfState, HardState, Snapshot, SnapshotMeta
from controller.raft.wal import WAL
from lepton import backup
from lepton.errors import FailedPrecondition
from lepton.v1 import control_pb2

log = logging.getLogger("lepton.controller.backup")

CHUNK_BYTES = 1024 * 1024  # well under the 4 MiB default gRPC message limit of clients


async def snapshot_chunks(replica) -> AsyncIterator[control_pb2.SnapshotChunk]:
    """Header chunk, then the state in CHUNK_BYTES pieces. Raises NotLeader on a follower."""
    replica.require_leader()
    await replica.read(False)  # everything committed before the call is applied here now
    # No await from here until the bytes are taken: index, term and state belong together.
    node, state = replica.node, replica.state
    data = state.snapshot()
    header = control_pb2.SnapshotHeader(
        format_version=backup.FORMAT_VERSION,
        applied_index=node.applied_index,
        applied_term=getattr(node, "applied_term", 0) or node.term,  # Raft stand-ins lack it
        sha256=backup.sha256_hex(data),
        size_bytes=len(data),
        digest=state.digest(),
        created_ms=replica.clock.now_ms(),
        leader_id=replica.id,
        voters=sorted(node.members()),
    )
    log.info(
        "snapshot for backup at index %d (term %d): %d bytes, digest %s",
        header.applied_index,
        header.applied_term,
        len(data),
        header.digest[:12],
    )
    yield control_pb2.SnapshotChunk(header=header)
    for off in range(0, len(data), CHUNK_BYTES):
        yield control_pb2.SnapshotChunk(data=data[off : off + CHUNK_BYTES])


def raft_storage_dir(data_dir: str | Path) -> Path:
    """Where a replica's RaftNode keeps wal/ and snap/: server.py hands RaftConfig
    `<data-dir>/raft` and the driver adds its own `raft/` below that."""
    return Path(data_dir) / "raft" / "raft"


def _is_empty_dir(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def seed_data_dir(
    backup_file: str | Path,
    data_dir: str | Path,
    node_id: str,
    peers: dict[str, str],
    *,
    cluster_id: str = "lepton",
    fsync: bool = True,
) -> control_pb2.SnapshotHeader:
    """Writes the Raft snapshot and WAL of a fresh replica that starts from `backup_file`.

    Refuses a data dir that holds anything (restoring over a live replica's
    log would fork the cluster). Verifies the checksum and that the state
    decodes, and that its digest is the one recorded at save time.
    """
    from controller.state import ClusterState

    data_dir = Path(data_dir)
    if not _is_empty_dir(data_dir):
        raise FailedPrecondition(
            f"--restore needs an empty data directory; {data_dir} is not empty "
            "(restore into a new directory, or move this one away first)"
        )
    if node_id not in peers:
        raise FailedPrecondition(f"--peers must include this replica's id {node_id!r}")
    header, data = backup.read_file(backup_file)
    probe = ClusterState()
    probe.restore(data)  # raises FailedPrecondition for undecodable state
    if header.digest and probe.digest() != header.digest:
        raise FailedPrecondition(
            f"{backup_file}: the state decodes to digest {probe.digest()}, the header says {header.digest}"
        )
    index, term = int(header.applied_index), int(header.applied_term)
    if index < 1 or term < 1:
        raise FailedPrecondition(f"{backup_file}: header has no applied index/term")

    raft_dir = raft_storage_dir(data_dir)
    raft_dir.mkdir(parents=True, exist_ok=True)
    voters = tuple(sorted(peers))
    # The member address book travels in the snapshot envelope, as in a snapshot
    # the driver takes itself: a restored replica knows where its peers are.
    snap = Snapshot(SnapshotMeta(index, term, ConfState(voters)), encode_envelope(dict(peers), data))
    SnapshotStore(raft_dir / "snap", fsync=fsync).save(snap)
    wal = WAL(raft_dir / "wal", node_id=node_id, cluster_id=cluster_id, fsync=fsync)
    wal.open(index, term)
    try:
        # Term t, not 0: the first election must produce a term above every term
        # in the (restored) log, or the new leader's entries would carry a lower
        # term than the snapshot they follow.
        wal.save((), HardState(term=term, vote="", commit=index), (index, term))
    finally:
        wal.close()
    log.info(
        "seeded %s from %s: index %d, term %d, voters %s, digest %s",
        data_dir,
        backup_file,
        index,
        term,
        ",".join(voters),
        header.digest[:12],
    )
    return header
