"""Snapshot files of the Raft module: ``<dir>/<term>-<index>.snap``, written atomically.

A file is ``magic | u16 version | u64 index | u64 term | u16 voter count |
(u16 len, utf-8 id)* | u64 data length | data | u32 crc32 of all before``.
It is written to a temporary name, fsynced, renamed into place and the
directory fsynced, so a crash leaves either the old set of files or the new
one, never a half-written snapshot under a final name. The newest few (2 by
default) are kept; loading picks the newest one whose CRC checks out and
warns about any newer one that does not (the WAL is compacted only up to
the older snapshot, so falling back to it loses nothing).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

from .types import ConfState, Snapshot, SnapshotMeta
from .wal import StorageError, _fsync_dir

log = logging.getLogger(__name__)

SNAP_MAGIC = b"LEPTNSNP"
SNAP_VERSION = 1
_HEAD = struct.Struct("<HQQH")  # version, index, term, voter count
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_NAME = re.compile(r"^(\d+)-(\d+)\.snap$")


def encode_snapshot(snap: Snapshot) -> bytes:
    parts = [
        SNAP_MAGIC,
        _HEAD.pack(SNAP_VERSION, snap.meta.index, snap.meta.term, len(snap.meta.conf.voters)),
    ]
    for v in snap.meta.conf.voters:
        b = v.encode()
        parts += [_U16.pack(len(b)), b]
    parts += [_U64.pack(len(snap.data)), snap.data]
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def decode_snapshot(buf: bytes, name: str = "snapshot") -> Snapshot:
    """Parses a snapshot file; raises StorageError when it is damaged or of another format."""
    if buf[: len(SNAP_MAGIC)] != SNAP_MAGIC:
        raise StorageError(f"{name}: not a Lepton snapshot (bad magic)")
    if len(buf) < len(SNAP_MAGIC) + _HEAD.size + _U64.size + _U32.size:
        raise StorageError(f"{name}: truncated")
    (crc,) = _U32.unpack_from(buf, len(buf) - _U32.size)
    if zlib.crc32(memoryview(buf)[: len(buf) - _U32.size]) != crc:
        raise StorageError(f"{name}: CRC mismatch")
    version, index, term, nvoters = _HEAD.unpack_from(buf, len(SNAP_MAGIC))
    if version != SNAP_VERSION:
        raise StorageError(f"{name}: snapshot format version {version}, this build reads {SNAP_VERSION}")
    p = len(SNAP_MAGIC) + _HEAD.size
    voters = []
    for _ in range(nvoters):
        (n,) = _U16.unpack_from(buf, p)
        voters.append(buf[p + 2 : p + 2 + n].decode())
        p += 2 + n
    (dlen,) = _U64.unpack_from(buf, p)
    p += _U64.size
    data = bytes(buf[p : p + dlen])
    if len(data) != dlen:
        raise StorageError(f"{name}: truncated data")
    return Snapshot(SnapshotMeta(index, term, ConfState(tuple(voters))), data)


class SnapshotStore:
    """The snapshot directory of one replica."""

    def __init__(self, directory: Path, *, keep: int = 2, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.fsync_enabled = fsync

    def _files(self) -> list[tuple[int, int, Path]]:
        """(index, term, path), oldest first."""
        if not self.dir.exists():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(2)), int(m.group(1)), p))
        out.sort()
        return out

    def save(self, snap: Snapshot) -> Path:
        """Writes `snap` atomically and prunes all but the newest `keep` files. Blocking."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            if self.fsync_enabled:
                _fsync_dir(self.dir.parent)
        final = self.dir / f"{snap.meta.term}-{snap.meta.index}.snap"
        tmp = self.dir / (final.name + ".tmp")
        data = encode_snapshot(snap)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync_enabled:
                os.fsync(f.fileno())
        os.rename(tmp, final)
        if self.fsync_enabled:
            _fsync_dir(self.dir)
        files = self._files()
        for _, _, p in files[: max(0, len(files) - self.keep)]:
            p.unlink(missing_ok=True)
        return final

    def indexes(self) -> list[int]:
        """Indexes of the snapshot files present, oldest first."""
        return [i for i, _, _ in self._files()]

    def load_newest(self) -> Snapshot | None:
        """The newest snapshot that reads back intact, or None when there is none."""
        for p in self.dir.glob("*.snap.tmp") if self.dir.exists() else ():
            p.unlink(missing_ok=True)  # left by a crash before the rename
        for _, _, p in reversed(self._files()):
            try:
                return decode_snapshot(p.read_bytes(), str(p))
            except StorageError as e:
                if "version" in str(e):
                    raise  # an incompatible format is refused, not skipped
                log.warning("skipping damaged snapshot: %s", e)
        return None
