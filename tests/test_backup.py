"""Backup and restore (docs/backup.md): the file format, seeding a data dir, and disaster recovery.

The recovery test is the documented procedure with real processes: three
controllers take jobs, `lepton-ctl cluster snapshot save` writes a backup,
every replica is stopped and its data dir destroyed, three fresh data dirs
are seeded with `lepton-controller --restore`, and the new cluster holds the
same jobs, tasks and event history (and the seeded state has the digest the
backup recorded) and takes new writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from controller.backup import raft_storage_dir, seed_data_dir
from controller.raft.node import decode_envelope
from controller.raft.snapshots import SnapshotStore
from controller.state import ClusterState, command, encode
from lepton import backup
from lepton.client import LeptonClient
from lepton.errors import FailedPrecondition
from lepton.v1 import commands_pb2, control_pb2, types_pb2
from tests.support.procs import ControllerCluster

GiB = 2**30


def spec(name: str, count: int = 2) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=name,
        count=count,
        priority=5,
        template=types_pb2.TaskTemplate(
            command="sleep", args=["60"], resources=types_pb2.Resources(cpu_millis=250, memory_bytes=GiB)
        ),
    )


def _state_with_a_job() -> ClusterState:
    st = ClusterState()
    body = commands_pb2.SubmitJob(job_id="j1", spec=spec("web"))
    result = st.apply(3, 2, encode(command(body, time_ms=1_000)))
    assert not isinstance(result, Exception), result
    return st


def _header_for(st: ClusterState, index: int = 3, term: int = 2) -> tuple[control_pb2.SnapshotHeader, bytes]:
    data = st.snapshot()
    h = control_pb2.SnapshotHeader(
        format_version=backup.FORMAT_VERSION,
        applied_index=index,
        applied_term=term,
        sha256=backup.sha256_hex(data),
        size_bytes=len(data),
        digest=st.digest(),
        created_ms=1_000,
        leader_id="c1",
        voters=["c1"],
    )
    return h, data


# ---- the file format ----------------------------------------------------------


def test_backup_file_round_trips_and_detects_damage(tmp_path):
    h, data = _header_for(_state_with_a_job())
    path = tmp_path / "b.lbk"
    backup.write_file(path, h, data)
    h2, data2 = backup.read_file(path)
    assert h2 == h and data2 == data
    blob = path.read_bytes()
    assert blob.startswith(b"LEPTON-BACKUP 1\n")
    assert json.loads(blob.split(b"\n")[1])["applied_index"] == 3  # `head -2` tells what it holds

    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    with pytest.raises(backup.BackupError, match="checksum mismatch"):
        backup.decode(bytes(flipped))
    with pytest.raises(backup.BackupError, match="bytes, the header says"):
        backup.decode(blob[:-1])
    with pytest.raises(backup.BackupError, match="format version 2"):
        backup.decode(blob.replace(b"LEPTON-BACKUP 1", b"LEPTON-BACKUP 2", 1))
    with pytest.raises(backup.BackupError, match="not a Lepton backup"):
        backup.decode(b"PK\x03\x04 a zip file")
    with pytest.raises(backup.BackupError, match="not JSON"):
        backup.decode(b"LEPTON-BACKUP 1\n{oops\n")


def test_seed_writes_a_raft_snapshot_the_state_machine_restores(tmp_path):
    st = _state_with_a_job()
    h, data = _header_for(st, index=40, term=7)
    path = tmp_path / "b.lbk"
    backup.write_file(path, h, data)
    peers = {"c1": "127.0.0.1:1", "c2": "127.0.0.1:2", "c3": "127.0.0.1:3"}
    seed_data_dir(path, tmp_path / "d2", "c2", peers)
    snap = SnapshotStore(raft_storage_dir(tmp_path / "d2") / "snap").load_newest()
    assert (snap.meta.index, snap.meta.term, snap.meta.conf.voters) == (40, 7, ("c1", "c2", "c3"))
    members, sm_bytes = decode_envelope(snap.data)
    assert members == peers
    restored = ClusterState()
    restored.restore(sm_bytes)
    assert restored.digest() == st.digest() == h.digest


def test_seed_refuses_a_used_data_dir_and_a_damaged_file(tmp_path):
    h, data = _header_for(_state_with_a_job())
    path = tmp_path / "b.lbk"
    backup.write_file(path, h, data)
    used = tmp_path / "used"
    (used / "raft").mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="empty data directory"):
        seed_data_dir(path, used, "c1", {"c1": "127.0.0.1:1"})
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(backup.BackupError, match="checksum"):
        seed_data_dir(path, tmp_path / "fresh", "c1", {"c1": "127.0.0.1:1"})
    assert not (tmp_path / "fresh" / "raft").exists()  # nothing half-written

    # The same refusal through the entry point: one line, exit status 1, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "controller.main", "--id", "c1", "--data-dir", str(used)]
        + ["--restore", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot restore" in proc.stderr and "Traceback" not in proc.stderr


# ---- disaster recovery with real processes -------------------------------------


def _ctl(*args: str, controllers: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leptonctl.main", "--controllers", ",".join(controllers), "--timeout", "30s"]
        + list(args),
        capture_output=True,
        text=True,
        timeout=90,
    )


def _wait_status(client: LeptonClient, pred, what: str, within: float = 60.0) -> control_pb2.ClusterStatus:
    end = time.monotonic() + within
    last = None
    while time.monotonic() < end:
        try:
            last = client.cluster_status()
            if pred(last):
                return last
        except Exception as e:  # an election in progress: keep asking
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: last status {last}")


def _record(client: LeptonClient) -> tuple[list, list]:
    jobs = sorted(
        (j.SerializeToString(deterministic=True) for j in client.list_jobs(include_finished=True)),
    )
    tasks = []
    for t in client.list_tasks():
        if t.state == types_pb2.TASK_STATE_PENDING:
            t.reason = ""  # the leader's latest "cannot place" text: soft state, not replicated
        tasks.append(t.SerializeToString(deterministic=True))
    return jobs, sorted(tasks)


def test_disaster_recovery_save_destroy_restore(tmp_path):
    for d in ("old", "new"):
        (tmp_path / d).mkdir()
    old = ControllerCluster(tmp_path / "old", 3)
    new = None
    try:
        old.start()
        with LeptonClient(old.api_addresses, timeout=30) as client:
            _wait_status(client, lambda s: s.leader_id and len(s.members) == 3, "old cluster has a leader")
            ids = [client.submit_job(spec(f"job{i}", count=i + 1)).job.id for i in range(3)]
            client.cancel_job(ids[0])
            jobs_before, tasks_before = _record(client)
            events_before = list(client.watch_events())
        assert len(tasks_before) == 6

        backup_file = tmp_path / "cluster.lbk"
        out = _ctl(
            "cluster", "snapshot", "save", str(backup_file), "-o", "json", controllers=old.api_addresses
        )
        assert out.returncode == 0, out.stderr
        saved = json.loads(out.stdout)
        header, data = backup.read_file(backup_file)
        assert saved["sha256"] == header.sha256 and saved["applied_index"] == header.applied_index > 0
        assert saved["voters"] == ["c1", "c2", "c3"]
        shown = _ctl("cluster", "snapshot", "inspect", str(backup_file), controllers=["127.0.0.1:1"])
        assert shown.returncode == 0 and header.digest in shown.stdout

        # Disaster: every replica stops and every data dir is gone.
        for p in old.procs.values():
            assert p.terminate() == 0, p.log_tail()
        for p in old.procs.values():
            shutil.rmtree(p.data_dir)

        # Recovery: three fresh data dirs (new addresses too), all seeded from the one file.
        new = ControllerCluster(tmp_path / "new", 3, extra=["--restore", str(backup_file)])
        new.start()
        with LeptonClient(new.api_addresses, timeout=30) as client:
            st = _wait_status(
                client, lambda s: s.leader_id and len(s.members) == 3, "new cluster has a leader"
            )
            # The new cluster starts after the backup's log position, in a later term.
            assert st.applied_index > header.applied_index
            assert st.term > header.applied_term
            # The seeded state is exactly what the backup recorded, on every replica.
            for p in new.procs.values():
                snap = SnapshotStore(raft_storage_dir(p.data_dir) / "snap").load_newest()
                assert snap is not None and snap.meta.index >= header.applied_index
                if snap.meta.index == header.applied_index:
                    probe = ClusterState()
                    probe.restore(decode_envelope(snap.data)[1])
                    assert probe.digest() == header.digest
            jobs_after, tasks_after = _record(client)
            assert jobs_after == jobs_before
            assert tasks_after == tasks_before
            events_after = list(client.watch_events())
            assert events_after[: len(events_before)] == events_before
            # The replicated records themselves, as a backup of the new cluster holds them.
            _, now = client.save_snapshot()
            old_state, new_state = commands_pb2.ClusterSnapshot(), commands_pb2.ClusterSnapshot()
            old_state.ParseFromString(data)
            new_state.ParseFromString(now)
            for field in ("nodes", "jobs", "tasks", "request_ids"):
                assert list(getattr(new_state, field)) == list(getattr(old_state, field)), field
            assert list(new_state.events)[: len(old_state.events)] == list(old_state.events)
            # ...and it takes new writes.
            d = client.submit_job(spec("after-restore", count=1))
            assert client.get_job("after-restore").job.id == d.job.id
            assert len(client.list_jobs()) == 3  # job1, job2 and the new one (job0 was cancelled)
    except BaseException:
        print(old.logs())
        if new is not None:
            print(new.logs())
        raise
    finally:
        old.close()
        if new is not None:
            new.close()
