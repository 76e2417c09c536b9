"""Unit tests of the Raft write-ahead log and snapshot files (controller/raft/wal.py, snapshots.py)."""

from __future__ import annotations

import logging

import pytest

from controller.raft.snapshots import SnapshotStore
from controller.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from controller.raft.wal import WAL, StorageError


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, f"v{i}-t{term}".encode()) for i in range(lo, hi + 1)]


def open_wal(d, **kw) -> tuple[WAL, object]:
    snap = kw.pop("snapshot_index", 0)
    w = WAL(d, node_id=kw.pop("node_id", "n1"), cluster_id=kw.pop("cluster_id", "test"), **kw)
    return w, w.open(snap)


def newest_segment(d):
    return sorted(d.glob("*.seg"))[-1]


def test_round_trip(tmp_path):
    w, st = open_wal(tmp_path)
    assert st.entries == [] and st.hard_state == HardState()
    w.save(ents(1, 5), HardState(1, "n2", 3))
    w.save(ents(6, 7, term=2), HardState(2, "n1", 6))
    w.close()
    w, st = open_wal(tmp_path)
    assert st.entries == ents(1, 5) + ents(6, 7, term=2)
    assert st.hard_state == HardState(2, "n1", 6)
    w.close()


def test_truncation_is_durable_across_reopen(tmp_path):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 10))
    # A new leader overwrites 6.. with entries of term 2: 7..10 of term 1 must be gone for good.
    w.save(ents(6, 6, term=2))
    w.close()
    w, st = open_wal(tmp_path)
    assert st.entries == ents(1, 5) + ents(6, 6, term=2)
    w.save(ents(7, 8, term=2))
    w.close()
    w, st = open_wal(tmp_path)
    w.close()
    assert [e.index for e in st.entries] == list(range(1, 9))
    assert all(e.term == 2 for e in st.entries[5:])


def test_torn_tail_is_cut_at_last_good_record_and_logged(tmp_path, caplog):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 20), HardState(1, "", 20))
    w.close()
    seg = newest_segment(tmp_path)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 3)  # the last record (the hard state) is torn
    with caplog.at_level(logging.WARNING):
        w, st = open_wal(tmp_path)
    assert "torn tail" in caplog.text
    assert st.entries == ents(1, 20)
    assert st.hard_state == HardState()  # the torn hard state record is gone
    # The file was cut: appending continues cleanly after the last good record.
    w.save(ents(21, 21))
    w.close()
    w, st = open_wal(tmp_path)
    w.close()
    assert st.entries == ents(1, 21)


def test_garbage_appended_after_tail_is_cut(tmp_path, caplog):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 3))
    w.close()
    with open(newest_segment(tmp_path), "ab") as f:
        f.write(b"\x00" * 100)  # e.g. a preallocated, never written region
    with caplog.at_level(logging.WARNING):
        w, st = open_wal(tmp_path)
        w.close()
    assert st.entries == ents(1, 3)
    assert "cutting 100 bytes" in caplog.text


def test_corruption_in_the_middle_is_refused(tmp_path):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 50))
    w.close()
    seg = newest_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte inside some entry in the middle
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt record"):
        open_wal(tmp_path)
    assert seg.read_bytes() == bytes(data)  # nothing was cut or rewritten


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "00000001.seg").write_bytes(b"this is not a lepton wal at all, just some other file" * 4)
    with pytest.raises(StorageError, match="bad magic"):
        open_wal(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "member").mkdir()  # e.g. an etcd data dir
    with pytest.raises(StorageError, match="not a Lepton WAL segment"):
        open_wal(other)


def test_other_node_or_cluster_or_version_is_refused(tmp_path):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 2))
    w.close()
    with pytest.raises(StorageError, match="another replica"):
        open_wal(tmp_path, node_id="n2")
    with pytest.raises(StorageError, match="another replica"):
        open_wal(tmp_path, cluster_id="prod")
    seg = newest_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    # Rewrite the header record as format version 99 with a valid CRC: refused, not "repaired".
    import struct
    import zlib

    length = struct.unpack_from("<I", data, 8)[0]
    body = bytearray(data[16 : 16 + length])
    body[1:3] = struct.pack("<H", 99)
    data[12:16] = struct.pack("<I", zlib.crc32(bytes(body)))
    data[16 : 16 + length] = body
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="version 99"):
        open_wal(tmp_path)


def test_segments_roll_over_and_compaction_keeps_what_is_needed(tmp_path):
    w, _ = open_wal(tmp_path, segment_bytes=2048)
    for lo in range(1, 400, 10):
        w.save(ents(lo, lo + 9), HardState(3, "n1", lo + 9))
    segs = w.segments()
    assert len(segs) > 5
    removed = w.compact(200)
    assert removed and all(not p.exists() for p in removed)
    assert len(w.segments()) < len(segs)
    w.close()
    # Reopen on top of a snapshot at 200: everything after it and the hard state are intact.
    w, st = open_wal(tmp_path, snapshot_index=200, segment_bytes=2048)
    assert [e.index for e in st.entries] == list(range(201, 401))
    assert st.hard_state == HardState(3, "n1", 400)
    w.close()
    # Without the snapshot, the compacted prefix is missing: a gap is an error, not silence.
    with pytest.raises(StorageError, match="gap"):
        open_wal(tmp_path)


def test_snapshot_marker_resets_log(tmp_path):
    w, _ = open_wal(tmp_path)
    w.save(ents(1, 10))
    # The leader sent a snapshot at 50: the old log is replaced.
    w.save(snapshot=(50, 4))
    w.save(ents(51, 52, term=4))
    w.close()
    w, st = open_wal(tmp_path, snapshot_index=50)
    w.close()
    assert [e.index for e in st.entries] == [51, 52]
    assert (st.snapshot_index, st.snapshot_term) == (50, 4)
    with pytest.raises(StorageError, match="newest valid snapshot file is at index 10"):
        open_wal(tmp_path, snapshot_index=10)


def test_snapshot_store_atomic_keep_two_and_fallback(tmp_path, caplog):
    store = SnapshotStore(tmp_path)
    assert store.load_newest() is None
    for i in (10, 20, 30):
        store.save(Snapshot(SnapshotMeta(i, 2, ConfState(("a", "b"))), b"x" * i))
    assert store.indexes() == [20, 30]
    snap = store.load_newest()
    assert snap.meta == SnapshotMeta(30, 2, ConfState(("a", "b"))) and snap.data == b"x" * 30
    newest = tmp_path / "2-30.snap"
    newest.write_bytes(newest.read_bytes()[:-5])
    with caplog.at_level(logging.WARNING):
        snap = store.load_newest()
    assert snap.meta.index == 20 and "damaged snapshot" in caplog.text


def test_directory_is_locked_against_a_second_writer(tmp_path):
    w, _ = open_wal(tmp_path)
    with pytest.raises(StorageError, match="in use by another process"):
        open_wal(tmp_path)
    w.close()
    w, _ = open_wal(tmp_path)  # released by close()
    w.close()
