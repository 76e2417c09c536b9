"""The Raft write-ahead log: segment files of CRC-framed records, fsync, torn-tail repair.

Layout: ``<dir>/00000001.seg``, ``00000002.seg``, ... Each segment starts with
an 8-byte file magic and a HEADER record (format version, cluster id, node
id), followed by the current hard state and snapshot marker (so that deleting
older segments never loses them), then ENTRY / HARD_STATE / SNAPSHOT
records. Every record is framed as ``<u32 body length><u32 crc32(body)>``
followed by the body ``<u8 type><payload>``.

Truncation of a conflicting suffix needs no record of its own: an ENTRY at
index i replaces every entry >= i when the log is replayed (etcd's WAL does
the same), so the truncation is exactly as durable as the entry that caused
it. A SNAPSHOT marker says the log was reset to a snapshot received from the
leader: entries written before it are discarded on replay.

Durability: `write()` only hands bytes to the kernel; `sync()` fsyncs the
segment. The driver writes a whole Ready batch and syncs once (group
commit). New segments are fsynced and so is the directory.

Opening scans every segment. A damaged record at the end of the newest
segment is a torn write (the process died mid-append): the file is cut at the
last good record and a warning says how much was cut. A damaged record that
is followed by valid records, or damage in an older segment, is corruption
and is refused, as is a directory written by something else, by an
incompatible format version, or by another node or cluster. Nothing is ever
overwritten in those cases.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lepton.errors import FailedPrecondition

from .types import Entry, EntryType, HardState

log = logging.getLogger(__name__)

FILE_MAGIC = b"LEPTNWAL"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
LOCK_NAME = "LOCK"

REC_HEADER = 1
REC_ENTRY = 2
REC_HARD_STATE = 3
REC_SNAPSHOT = 4

_FRAME = struct.Struct("<II")  # body length, crc32(body)
_ENTRY = struct.Struct("<QQB")  # term, index, entry type
_HS = struct.Struct("<QQ")  # term, commit (vote follows as utf-8)
_SNAP = struct.Struct("<QQ")  # index, term
_VERSION = struct.Struct("<H")
_SEG_NAME = re.compile(r"^(\d{8})\.seg$")
# How far past a damaged record we look for a valid one before deciding the
# damage is a torn tail rather than corruption in the middle of the log.
_RESYNC_WINDOW = 64 * 1024


class StorageError(FailedPrecondition):
    """The data directory cannot be used as it is (corrupt, foreign, incompatible)."""


@dataclass(slots=True)
class WalState:
    """What replaying the log produced: the state to construct the Raft core from."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0  # newest SNAPSHOT marker seen (0 = none)
    snapshot_term: int = 0


def _frame(rtype: int, payload: bytes) -> bytes:
    body = bytes([rtype]) + payload
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_entry(e: Entry) -> bytes:
    return _frame(REC_ENTRY, _ENTRY.pack(e.term, e.index, int(e.type)) + e.data)


def encode_hard_state(hs: HardState) -> bytes:
    return _frame(REC_HARD_STATE, _HS.pack(hs.term, hs.commit) + hs.vote.encode())


def encode_snapshot_marker(index: int, term: int) -> bytes:
    return _frame(REC_SNAPSHOT, _SNAP.pack(index, term))


def _encode_header(cluster_id: str, node_id: str) -> bytes:
    c, n = cluster_id.encode(), node_id.encode()
    payload = _VERSION.pack(FORMAT_VERSION) + bytes([len(c)]) + c + bytes([len(n)]) + n
    return FILE_MAGIC + _frame(REC_HEADER, payload)


def _scan(buf: bytes, pos: int) -> tuple[list[tuple[int, bytes]], int, str]:
    """Reads records from `pos` until the end or the first bad one.

    Returns (records, offset after the last good record, problem or "")."""
    out: list[tuple[int, bytes]] = []
    n = len(buf)
    mv = memoryview(buf)
    while pos < n:
        if n - pos < _FRAME.size:
            return out, pos, f"{n - pos} stray bytes (partial record header)"
        length, crc = _FRAME.unpack_from(buf, pos)
        if length == 0 or pos + _FRAME.size + length > n:
            return out, pos, f"record length {length} runs past the end of the file"
        body = mv[pos + _FRAME.size : pos + _FRAME.size + length]
        if zlib.crc32(body) != crc:
            return out, pos, "CRC mismatch"
        out.append((body[0], bytes(body[1:])))
        pos += _FRAME.size + length
    return out, pos, ""


def _valid_at(buf: bytes, p: int) -> bool:
    """True when a well-formed ENTRY/HARD_STATE/SNAPSHOT record starts at offset `p`."""
    if len(buf) - p < _FRAME.size + 1:
        return False
    length, crc = _FRAME.unpack_from(buf, p)
    end = p + _FRAME.size + length
    if length == 0 or end > len(buf) or buf[p + _FRAME.size] not in (REC_ENTRY, REC_HARD_STATE, REC_SNAPSHOT):
        return False
    return zlib.crc32(memoryview(buf)[p + _FRAME.size : end]) == crc


def _valid_record_after(buf: bytes, bad: int) -> int | None:
    """Offset of a valid record after the damaged one at `bad`, if any.

    A torn tail has nothing valid after it; corruption in the middle does. We
    try the offset the damaged record's own length points at, then every
    offset in a window after it (a damaged length field hides the boundary)."""
    candidates = []
    if len(buf) - bad >= _FRAME.size:
        length = _FRAME.unpack_from(buf, bad)[0]
        if length:
            candidates.append(bad + _FRAME.size + length)
    candidates.extend(range(bad + 1, min(len(buf), bad + _RESYNC_WINDOW)))
    for p in candidates:
        if _valid_at(buf, p):
            return p
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    """An open write-ahead log. Not thread-safe: one owner (the driver) calls it."""

    def __init__(
        self,
        directory: Path,
        *,
        node_id: str,
        cluster_id: str = "lepton",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.segment_bytes = segment_bytes
        self.fsync_enabled = fsync
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._size = 0
        self._seg_max: dict[int, int] = {}  # segment seq -> highest entry index written in it
        self._hs = HardState()
        self._snap = (0, 0)

    # ---- opening and replay ----

    def open(self, snapshot_index: int = 0, snapshot_term: int = 0) -> WalState:
        """Scans and repairs the log, replays it on top of a snapshot at `snapshot_index`.

        Creates the directory and the first segment when there is none."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            if self.fsync_enabled:
                # Make the new directory itself durable, not only its contents.
                _fsync_dir(self.dir.parent)
                _fsync_dir(self.dir.parent.parent)
        segs = self._list_segments()  # refuses a foreign directory before we write anything into it
        self._lock()
        try:
            return self._replay(segs, snapshot_index, snapshot_term)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Takes an exclusive lock on the directory: two processes appending to one WAL would corrupt it."""
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"{self.dir} is in use by another process (cannot lock {LOCK_NAME})") from None
        self._lock_fd = fd

    def _replay(self, segs: list[tuple[int, Path]], snapshot_index: int, snapshot_term: int) -> WalState:
        state = WalState(snapshot_index=snapshot_index, snapshot_term=snapshot_term)
        base = snapshot_index
        entries: list[Entry] = []
        for i, (seq, path) in enumerate(segs):
            last = i == len(segs) - 1
            records = self._read_segment(path, last)
            if records is None:  # newest segment torn while being created: removed
                continue
            top = 0
            for rtype, payload in records:
                if rtype == REC_ENTRY:
                    term, index, etype = _ENTRY.unpack_from(payload)
                    top = max(top, index)
                    if index <= base:
                        continue
                    pos = index - base - 1
                    if pos > len(entries):
                        raise StorageError(
                            f"{path}: gap in the log: entry {index} follows entry {base + len(entries)} "
                            f"(is a snapshot file missing or damaged?)"
                        )
                    del entries[pos:]
                    entries.append(Entry(term, index, EntryType(etype), payload[_ENTRY.size :]))
                elif rtype == REC_HARD_STATE:
                    term, commit = _HS.unpack_from(payload)
                    state.hard_state = HardState(term, payload[_HS.size :].decode(), commit)
                elif rtype == REC_SNAPSHOT:
                    index, term = _SNAP.unpack_from(payload)
                    if index > snapshot_index:
                        raise StorageError(
                            f"{path}: the log was reset to a snapshot at index {index}, but the newest "
                            f"valid snapshot file is at index {snapshot_index}"
                        )
                    # The log before the marker belonged to a log the snapshot replaced.
                    entries = []
                    state.snapshot_index, state.snapshot_term = index, term
                else:
                    raise StorageError(f"{path}: unknown record type {rtype}")
            self._seg_max[seq] = top
            self._seq = seq
        state.entries = entries
        self._hs = state.hard_state
        self._snap = (state.snapshot_index, state.snapshot_term)
        if self._seq == 0 or not (self.dir / f"{self._seq:08d}.seg").exists():
            self._new_segment()
        else:
            path = self.dir / f"{self._seq:08d}.seg"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._size = path.stat().st_size
        return state

    def _list_segments(self) -> list[tuple[int, Path]]:
        segs = []
        for p in self.dir.iterdir():
            m = _SEG_NAME.match(p.name)
            if m:
                segs.append((int(m.group(1)), p))
            elif p.name.endswith(".tmp") or p.name == LOCK_NAME:
                continue
            else:
                raise StorageError(
                    f"{self.dir} holds {p.name!r}, which is not a Lepton WAL segment; "
                    "refusing to use a directory written by something else"
                )
        segs.sort()
        return segs

    def _read_segment(self, path: Path, last: bool) -> list[tuple[int, bytes]] | None:
        buf = path.read_bytes()
        expected = _encode_header(self.cluster_id, self.node_id)
        if buf[: len(FILE_MAGIC)] != FILE_MAGIC:
            if last and len(buf) < len(expected) and (not buf or FILE_MAGIC.startswith(buf[:8])):
                log.warning("WAL segment %s was torn while being created (%d bytes): removed", path, len(buf))
                path.unlink()
                _fsync_dir(self.dir)
                return None
            raise StorageError(f"{path} is not a Lepton WAL segment (bad magic); refusing to use it")
        records, end, problem = _scan(buf, len(FILE_MAGIC))
        if not records or records[0][0] != REC_HEADER:
            if last and problem and len(buf) < len(expected):
                log.warning("WAL segment %s was torn while being created (%d bytes): removed", path, len(buf))
                path.unlink()
                _fsync_dir(self.dir)
                return None
            raise StorageError(f"{path}: missing or damaged segment header")
        self._check_header(path, records[0][1])
        if problem:
            after = _valid_record_after(buf, end)
            if not last or after is not None:
                where = f"; valid records follow at offset {after}" if after is not None else ""
                raise StorageError(
                    f"{path}: corrupt record at offset {end} ({problem}){where}; "
                    "refusing to cut a log in the middle"
                )
            log.warning(
                "WAL %s: torn tail at offset %d (%s): cutting %d bytes after the last good record",
                path,
                end,
                problem,
                len(buf) - end,
            )
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)
                os.fsync(fd)
            finally:
                os.close(fd)
        return records[1:]

    def _check_header(self, path: Path, payload: bytes) -> None:
        try:
            (version,) = _VERSION.unpack_from(payload)
            if version != FORMAT_VERSION:
                raise StorageError(
                    f"{path}: WAL format version {version}, this build reads version {FORMAT_VERSION}; "
                    "refusing to open an incompatible data directory"
                )
            p = _VERSION.size
            cl = payload[p]
            cluster = payload[p + 1 : p + 1 + cl].decode()
            p += 1 + cl
            nl = payload[p]
            node = payload[p + 1 : p + 1 + nl].decode()
        except (IndexError, UnicodeDecodeError, struct.error) as e:
            raise StorageError(f"{path}: malformed segment header ({e})") from None
        if node != self.node_id or cluster != self.cluster_id:
            raise StorageError(
                f"{path} belongs to node {node!r} of cluster {cluster!r}, not node {self.node_id!r} "
                f"of cluster {self.cluster_id!r}; refusing to use another replica's data directory"
            )

    # ---- writing ----

    def _new_segment(self) -> None:
        """Starts the next segment: header + current hard state + snapshot marker, all fsynced."""
        if self._fd is not None:
            if self.fsync_enabled:
                os.fsync(self._fd)
            os.close(self._fd)
        self._seq += 1
        path = self.dir / f"{self._seq:08d}.seg"
        tmp = path.with_suffix(".tmp")
        data = _encode_header(self.cluster_id, self.node_id) + encode_hard_state(self._hs)
        if self._snap[0]:
            data += encode_snapshot_marker(*self._snap)
        # Written under a temporary name and renamed so that a crash never leaves
        # a half-written header that could be mistaken for a foreign file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if self.fsync_enabled:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if self.fsync_enabled:
            _fsync_dir(self.dir)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)
        self._seg_max[self._seq] = 0

    def write(
        self,
        entries: list[Entry] | tuple[Entry, ...] = (),
        hard_state: HardState | None = None,
        snapshot: tuple[int, int] | None = None,
    ) -> None:
        """Appends one batch (snapshot marker, entries, hard state, in that order). No fsync."""
        if self._fd is None:
            raise StorageError("the WAL is not open")
        if self._size >= self.segment_bytes:
            self._new_segment()
        parts = []
        if snapshot is not None:
            parts.append(encode_snapshot_marker(*snapshot))
            self._snap = snapshot
        top = self._seg_max.get(self._seq, 0)
        for e in entries:
            parts.append(encode_entry(e))
            if e.index > top:
                top = e.index
        self._seg_max[self._seq] = top
        if hard_state is not None:
            parts.append(encode_hard_state(hard_state))
            self._hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)
        data = b"".join(parts)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def sync(self) -> None:
        """Makes everything written so far durable (one fsync: group commit)."""
        if self._fd is not None and self.fsync_enabled:
            os.fsync(self._fd)

    def save(
        self,
        entries: list[Entry] | tuple[Entry, ...] = (),
        hard_state: HardState | None = None,
        snapshot: tuple[int, int] | None = None,
    ) -> None:
        """write() then sync(): one durable batch. Blocking; the driver runs it in a thread."""
        self.write(entries, hard_state, snapshot)
        self.sync()

    def compact(self, index: int) -> list[Path]:
        """Deletes the oldest segments whose entries are all <= `index` (never the current one)."""
        removed = []
        for seq in sorted(self._seg_max):
            if seq == self._seq or self._seg_max[seq] > index:
                break
            path = self.dir / f"{seq:08d}.seg"
            path.unlink(missing_ok=True)
            del self._seg_max[seq]
            removed.append(path)
        if removed and self.fsync_enabled:
            _fsync_dir(self.dir)
        return removed

    def segments(self) -> list[Path]:
        return [p for _, p in self._list_segments()]

    def close(self) -> None:
        try:
            if self._fd is not None:
                try:
                    if self.fsync_enabled:
                        os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
