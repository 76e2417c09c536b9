"""The backup file format of `lepton-ctl cluster snapshot save` (shared by the CLI and the controller).

A backup file is:

    LEPTON-BACKUP 1\\n                     magic line with the format version
    {"applied_index": ..., ...}\\n          one line of JSON: the SnapshotHeader fields
    <size_bytes bytes>                     the state: an encoded lepton.v1.ClusterSnapshot

The header records the Raft index and term the state includes, the sha256 of
the state bytes, the state's `ClusterState.digest()`, when and by whom it was
taken. JSON rather than protobuf for the header so that `head -2 FILE` tells
an operator what a file holds; the state itself is the same deterministic
protobuf the Raft snapshots carry. Nothing is pickled. A reader refuses an
unknown format version, a short or long file and a checksum mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lepton.errors import InvalidArgument
from lepton.v1 import control_pb2

MAGIC = b"LEPTON-BACKUP"
FORMAT_VERSION = 1
# Generous, but bounds what a reader allocates for a header line it has not checked yet.
MAX_HEADER_BYTES = 64 * 1024
_HEADER_FIELDS = (
    "format_version",
    "applied_index",
    "applied_term",
    "sha256",
    "size_bytes",
    "digest",
    "created_ms",
    "leader_id",
    "voters",
)


class BackupError(InvalidArgument):
    """The file is not a usable Lepton backup (format, truncation, checksum)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def header_to_dict(h: control_pb2.SnapshotHeader) -> dict:
    return {
        "format_version": h.format_version,
        "applied_index": h.applied_index,
        "applied_term": h.applied_term,
        "sha256": h.sha256,
        "size_bytes": h.size_bytes,
        "digest": h.digest,
        "created_ms": h.created_ms,
        "leader_id": h.leader_id,
        "voters": list(h.voters),
    }


def header_from_dict(d: dict) -> control_pb2.SnapshotHeader:
    try:
        return control_pb2.SnapshotHeader(**{k: d[k] for k in _HEADER_FIELDS if k in d})
    except (TypeError, ValueError) as e:
        raise BackupError(f"backup header has a malformed field: {e}") from None


def verify(header: control_pb2.SnapshotHeader, data: bytes) -> None:
    """Raises BackupError unless `data` is exactly what `header` describes."""
    if header.format_version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {header.format_version}; this build reads version {FORMAT_VERSION}"
        )
    if len(data) != header.size_bytes:
        raise BackupError(f"backup state is {len(data)} bytes, the header says {header.size_bytes}")
    actual = sha256_hex(data)
    if actual != header.sha256:
        raise BackupError(f"backup checksum mismatch: sha256 {actual}, the header says {header.sha256}")


def encode(header: control_pb2.SnapshotHeader, data: bytes) -> bytes:
    verify(header, data)
    head = json.dumps(header_to_dict(header), sort_keys=True).encode()
    return MAGIC + b" " + str(FORMAT_VERSION).encode() + b"\n" + head + b"\n" + data


def decode(blob: bytes, name: str = "backup") -> tuple[control_pb2.SnapshotHeader, bytes]:
    """(header, state bytes) of a backup file's content; verifies version, size and checksum."""
    first, sep, rest = blob.partition(b"\n")
    if not sep or not first.startswith(MAGIC + b" "):
        raise BackupError(f"{name}: not a Lepton backup file")
    try:
        version = int(first[len(MAGIC) + 1 :])
    except ValueError:
        raise BackupError(f"{name}: unreadable format version") from None
    if version != FORMAT_VERSION:
        raise BackupError(f"{name}: backup format version {version}; this build reads {FORMAT_VERSION}")
    head, sep, data = rest.partition(b"\n")
    if not sep or len(head) > MAX_HEADER_BYTES:
        raise BackupError(f"{name}: truncated header")
    try:
        d = json.loads(head)
    except ValueError as e:
        raise BackupError(f"{name}: header is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise BackupError(f"{name}: header is not a JSON object")
    header = header_from_dict(d)
    try:
        verify(header, data)
    except BackupError as e:
        raise BackupError(f"{name}: {e}") from None
    return header, data


def write_file(path: str | os.PathLike, header: control_pb2.SnapshotHeader, data: bytes) -> None:
    """Writes atomically (temp file, fsync, rename, fsync the directory): never half a backup."""
    path = Path(path)
    blob = encode(header, data)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is done
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike) -> tuple[control_pb2.SnapshotHeader, bytes]:
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise BackupError(f"cannot read {path}: {e.strerror}") from None
    return decode(blob, str(path))
