"""Runner and state store in-process: log rotation, re-adoption rules (pid reuse, crash before save), bad state files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading

from agent import proctree
from agent.runner import Runner, describe_exit
from agent.standin import assignment
from agent.state_store import FAILED, RUNNING, StateStore, TaskRecord
from lepton.v1 import agent_pb2


def make_runner(tmp_path, **kw):
    events: list[agent_pb2.TaskEvent] = []
    store = StateStore(tmp_path / "data")
    return Runner(store, "n1", events.append, **kw), store, events


def size(path: str) -> int:
    return os.path.getsize(path)


def spawn_sleep(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


async def wait_until(predicate, within: float = 30.0) -> None:
    async def loop():
        while not predicate():  # noqa: ASYNC110 - files and /proc have no change notification here
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), within)


def test_describe_exit():
    assert describe_exit(0) == (0, "")
    assert describe_exit(3) == (3, "exited with code 3")
    assert describe_exit(-signal.SIGKILL) == (137, "killed by SIGKILL")


async def test_logs_are_rotated_at_the_cap(tmp_path):
    runner, _, events = make_runner(tmp_path, log_max_bytes=1000)
    r = runner.start(
        assignment("chatty.0", "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; echo; exec sleep 60")
    )
    try:
        await wait_until(lambda: size(r.stdout_path) > 5000)
        runner.rotate_logs()
        assert size(r.stdout_path + ".1") > 5000
        assert size(r.stdout_path) == 0
    finally:
        await runner.stop_all("test over")
        runner.close()
    assert [e.type for e in events] == [agent_pb2.TASK_EVENT_STARTED, agent_pb2.TASK_EVENT_STOPPED]


async def test_a_reused_pid_is_not_adopted(tmp_path):
    store = StateStore(tmp_path / "data")
    me = proctree.read_stat(os.getpid())
    # Our own pid with a different start time: "the task's pid now belongs to someone else".
    store.save(3, [TaskRecord("old.0", 1, RUNNING, pid=os.getpid(), start_ticks=me.start_ticks + 1)])
    runner, _, events = make_runner(tmp_path)
    runner.adopt()
    rec = runner.records()[("old.0", 1)]
    assert rec.state == FAILED and rec.exit_code is None
    assert "exit code unknown" in rec.reason
    assert runner.desired_version == 3
    assert events[0].type == agent_pb2.TASK_EVENT_EXITED and events[0].exit_code == -1
    runner.close()


async def test_a_task_started_just_before_a_crash_is_found(tmp_path):
    store = StateStore(tmp_path / "data")
    workdir = tmp_path / "data" / "tasks" / "t.0.1"
    workdir.mkdir(parents=True)
    # The agent saved its intent (pid 0) and died right after the fork.
    store.save(1, [TaskRecord("t.0", 1, RUNNING, pid=0, stdout_path=str(workdir / "stdout.log"))])
    env = dict(os.environ, LEPTON_TASK_DIR=str(workdir))
    p = spawn_sleep(env)
    try:
        runner, _, _ = make_runner(tmp_path)
        runner.adopt()
        rec = runner.records()[("t.0", 1)]
        assert rec.state == RUNNING and rec.pid == p.pid
        stopping = runner.stop(("t.0", 1))
        await asyncio.wait_for(stopping, 30)
        assert runner.records()[("t.0", 1)].state == "stopped"
        runner.close()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_a_corrupt_state_file_is_set_aside(tmp_path):
    store = StateStore(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    state = store.load()
    assert state.tasks == [] and (tmp_path / "state.json.corrupt").exists()
    store.save(2, [TaskRecord("a.0", 1)])
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["format"] == 1 and doc["desired_version"] == 2 and doc["tasks"][0]["task_id"] == "a.0"


async def test_a_burst_of_starts_costs_one_synchronous_state_write(tmp_path):
    # Regression (fault suite): every start used to fsync state.json twice on
    # the event loop; 250 starts blocked reports for seconds and the leader
    # declared the busy node down. Now the intent is written once per batch
    # before the forks, and later writes are coalesced off the loop.
    runner, store, events = make_runner(tmp_path)
    sync_writes = []
    write = store.write

    def counting_write(data, seq=None):
        sync_writes.append(threading.current_thread() is threading.main_thread())
        write(data, seq)

    store.write = counting_write
    batch = [assignment(f"burst.{i}", "sleep", "60") for i in range(20)]
    try:
        records = runner.start_many(batch)
        assert len(records) == 20 and all(r.pid > 0 for r in records)
        assert sync_writes == [True]  # the intent, before any fork
        await runner.flush()
        assert sync_writes.count(True) == 1 and len(sync_writes) <= 2
        on_disk = json.loads((tmp_path / "data" / "state.json").read_text())
        assert {t["task_id"]: t["pid"] for t in on_disk["tasks"]} == {r.task_id: r.pid for r in records}
    finally:
        await runner.stop_all("test over")
        runner.close()
    assert len([e for e in events if e.type == agent_pb2.TASK_EVENT_STARTED]) == 20
