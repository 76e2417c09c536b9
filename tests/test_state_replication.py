"""Replication properties of ClusterState: determinism, snapshot round trips, desired-set
versions, loud rejection of unusable entries, the bounded event log."""

from __future__ import annotations

import random

import pytest

from controller.state import ClusterState, command, encode
from controller.state.events import EventLog
from controller.state.testing import Harness, job_spec, resources
from lepton.errors import FailedPrecondition, InvalidArgument, LeptonError
from lepton.v1 import commands_pb2, types_pb2

TS = types_pb2.TaskState
NS = types_pb2.NodeStatus


def _random_history(seed: int, steps: int = 300) -> Harness:
    """A seeded, messy but valid-ish history: every command kind, many rejections."""
    rng = random.Random(seed)
    h = Harness()
    nodes = [f"n{i}" for i in range(5)]
    for n in nodes:
        h.add_node(n, cpu=8000, mem=16 * 2**30, net=1000)
    jobs = 0
    for _ in range(steps):
        if rng.random() < 0.05:
            h.term += 1
            h.apply(commands_pb2.LeaderChanged(leader_id=f"c{h.term % 3}", api_address="x:1"))
        op = rng.choices(range(10), weights=[3, 4, 4, 4, 4, 4, 1, 2, 1, 1])[0]
        if op == 0:
            jobs += 1
            h.submit(
                f"j{jobs}",
                spec=job_spec(
                    f"job{jobs % 7}",
                    count=rng.randint(1, 4),
                    priority=rng.randint(0, 9),
                    batch=rng.random() < 0.5,
                    res=resources(
                        cpu=rng.choice([500, 1000, 3000]), mem=2**30, net=rng.choice([0, 100, 400])
                    ),
                ),
                request_id=f"r{rng.randint(0, jobs)}",
            )
        elif op in (1, 2):
            pending = h.state.pending_tasks()[: rng.randint(1, 6)]
            if pending:
                pairs = {t.id: rng.choice(nodes) for t in pending}
                victims = []
                if rng.random() < 0.3:  # try to preempt something on the first task's node
                    first = pending[0]
                    on_node = h.state.tasks(node_id=pairs[first.id], state=TS.TASK_STATE_RUNNING)
                    victims = [
                        commands_pb2.Preemption(
                            task_id=v.id, expected_attempt=v.attempt, node_id=v.node_id, preempted_by=first.id
                        )
                        for v in on_node[:2]
                    ]
                plan_term = h.term if rng.random() < 0.9 else h.term - 1
                h.place(pairs, preemptions=victims, plan_term=plan_term)
        elif op in (3, 4, 5):
            placed = [
                t
                for t in h.state.tasks()
                if t.state
                in (
                    TS.TASK_STATE_ASSIGNED,
                    TS.TASK_STATE_STARTING,
                    TS.TASK_STATE_RUNNING,
                    TS.TASK_STATE_STOPPING,
                )
            ]
            if placed:
                t = rng.choice(placed)
                state = rng.choice(
                    [
                        TS.TASK_STATE_RUNNING,
                        TS.TASK_STATE_RUNNING,
                        TS.TASK_STATE_SUCCEEDED,
                        TS.TASK_STATE_FAILED,
                        TS.TASK_STATE_STOPPED,
                    ]
                )
                attempt = t.attempt if rng.random() < 0.9 else t.attempt - 1
                h.report(t.id, state, attempt=attempt, exit_code=0 if state == TS.TASK_STATE_SUCCEEDED else 1)
        elif op == 6:
            h.set_status(
                rng.choice(nodes),
                rng.choice([NS.NODE_STATUS_READY, NS.NODE_STATUS_SUSPECT, NS.NODE_STATUS_DOWN]),
            )
        elif op == 7:
            running = [t for t in h.state.tasks() if t.state == TS.TASK_STATE_RUNNING]
            if running:
                t = rng.choice(running)
                if t.migrating_to and rng.random() < 0.5:
                    h.report(t.id, TS.TASK_STATE_RUNNING, attempt=t.attempt + 1)
                else:
                    h.apply(
                        commands_pb2.MigrateTask(
                            task_id=t.id, expected_attempt=t.attempt, target_node_id=rng.choice(nodes)
                        )
                    )
        elif op == 8:
            n = rng.choice(nodes)
            body = rng.choice(
                [
                    commands_pb2.CordonNode(node_id=n),
                    commands_pb2.UncordonNode(node_id=n),
                    commands_pb2.UncordonNode(node_id=n),
                    commands_pb2.DrainNode(node_id=n),
                ]
            )
            h.apply(body)
        elif op == 9 and jobs:
            h.apply(commands_pb2.CancelJob(job_id=f"j{rng.randint(1, jobs)}"))
        if rng.random() < 0.1:
            h.add_node(rng.choice(nodes), cpu=8000, mem=16 * 2**30, net=1000)
    return h


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_same_log_gives_same_digest_on_a_fresh_replica(seed):
    h = _random_history(seed)
    other = h.replay_into(ClusterState())
    assert other.digest() == h.state.digest()
    assert other.snapshot() == h.state.snapshot()
    kinds = {e.type.split(".")[0] for e in h.state.events()}
    assert {"node", "job", "task"} <= kinds


@pytest.mark.parametrize("seed", [5, 6])
def test_snapshot_midway_then_replay_matches(seed):
    h = _random_history(seed)
    half = len(h.log) // 2
    first = ClusterState()
    for index, term, data in h.log[:half]:
        first.apply(index, term, data)
    restored = ClusterState()
    restored.restore(first.snapshot())
    assert restored.digest() == first.digest()
    assert restored.applied_index == first.applied_index
    for index, term, data in h.log[half:]:
        restored.apply(index, term, data)
    assert restored.digest() == h.state.digest()
    # derived indexes rebuilt by restore agree with the live replica
    for n in h.state.nodes():
        assert restored.desired_for_node(n.id) == h.state.desired_for_node(n.id)
        assert restored.node(n.id) == n


@pytest.mark.parametrize("seed", [7, 8])
def test_allocated_matches_the_tasks(seed):
    h = _random_history(seed)
    for n in h.state.nodes():
        holding = [
            t
            for t in h.state.tasks()
            if (
                t.node_id == n.id
                and t.state
                in (
                    TS.TASK_STATE_ASSIGNED,
                    TS.TASK_STATE_STARTING,
                    TS.TASK_STATE_RUNNING,
                    TS.TASK_STATE_STOPPING,
                )
            )
            or t.migrating_to == n.id
        ]
        assert n.allocated.cpu_millis == sum(t.resources.cpu_millis for t in holding)


def test_desired_versions_only_grow():
    rng = random.Random(11)
    h = Harness()
    for n in ("a", "b", "c"):
        h.add_node(n)
    seen = {n: 0 for n in ("a", "b", "c")}
    for i in range(40):
        h.submit(f"j{i}", name=f"job{i}", count=2)
        h.place({f"j{i}.0": rng.choice("abc"), f"j{i}.1": rng.choice("abc")})
        if i % 3 == 0:
            h.set_status(rng.choice("abc"), NS.NODE_STATUS_DOWN)
            h.add_node(rng.choice("abc"))
        for n in seen:
            v, _ = h.state.desired_for_node(n)
            assert v >= seen[n]
            seen[n] = v
    # across a restart (restore) the versions stay where they were
    restored = ClusterState()
    restored.restore(h.state.snapshot())
    assert {n: restored.desired_version(n) for n in seen} == seen


def test_unknown_node_has_empty_desired_set():
    assert ClusterState().desired_for_node("ghost") == (0, [])


def _unknown_kind() -> bytes:
    # a Command of version 1 with only an unknown field 99 (a newer proposer's command kind)
    return commands_pb2.Command(version=1, time_ms=5).SerializeToString() + bytes([0x9A, 0x06, 0x00])


BAD_ENTRIES = [
    ("empty", b"", InvalidArgument),
    ("garbage", b"\xff\xff\xff\xff", InvalidArgument),
    (
        "version 0",
        commands_pb2.Command(submit_job=commands_pb2.SubmitJob(job_id="x")).SerializeToString(),
        FailedPrecondition,
    ),
    (
        "version 2",
        commands_pb2.Command(
            version=2, cordon_node=commands_pb2.CordonNode(node_id="n1")
        ).SerializeToString(),
        FailedPrecondition,
    ),
    ("no command", commands_pb2.Command(version=1).SerializeToString(), FailedPrecondition),
    ("unknown kind", _unknown_kind(), FailedPrecondition),
]


@pytest.mark.parametrize(("case", "data", "err"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES])
def test_unusable_entries_fail_loudly_without_state_change(case, data, err, caplog):
    h = Harness()
    h.add_node("n1")
    before = h.state.digest()
    with caplog.at_level("ERROR", logger="lepton.state"):
        result = h.apply_bytes(data)
    assert isinstance(result, err)
    assert h.state.digest() == before
    assert h.state.applied_index == h.index
    assert any("rejected" in r.message for r in caplog.records)


def test_entry_applied_twice_acts_once():
    h = Harness()
    data = encode(command(commands_pb2.SubmitJob(job_id="j1", spec=job_spec()), time_ms=1))
    h.state.apply(1, 1, data)
    before = h.state.digest()
    assert isinstance(h.state.apply(1, 1, data), FailedPrecondition)
    assert h.state.digest() == before


RESTORE_REJECTIONS = [
    ("garbage", b"\xff\xff\xff"),
    ("future format", commands_pb2.ClusterSnapshot(format_version=99).SerializeToString()),
]


@pytest.mark.parametrize(("case", "data"), RESTORE_REJECTIONS, ids=[c[0] for c in RESTORE_REJECTIONS])
def test_restore_rejects_unusable_snapshots(case, data):
    state = ClusterState()
    with pytest.raises(FailedPrecondition):
        state.restore(data)


def test_empty_state_round_trip():
    a = ClusterState()
    b = ClusterState()
    b.restore(a.snapshot())
    assert a.digest() == b.digest()


def test_apply_returns_errors_never_raises_for_command_builder_misuse():
    with pytest.raises(TypeError):
        command(types_pb2.Job(), time_ms=1)  # not a command body: a programming error at the proposer


def test_event_log_is_bounded_and_filterable():
    log = EventLog(max_events=5)
    for i in range(8):
        log.emit(i, 1, "node.down" if i % 2 else "task.placed", f"e{i}", node_id=f"n{i % 2}")
    events = log.since()
    assert [e.seq for e in events] == [4, 5, 6, 7, 8]
    assert [e.seq for e in log.since(since_seq=6)] == [7, 8]
    assert [e.seq for e in log.since(types=["node."])] == [4, 6, 8]
    assert [e.seq for e in log.since(node_id="n0")] == [5, 7]
    assert [e.seq for e in log.since(limit=2)] == [7, 8]
    assert log.last_seq == 8


def test_events_survive_snapshot_with_their_sequence_numbers():
    h = Harness()
    h.add_node("n1")
    h.submit("j1")
    restored = ClusterState()
    restored.restore(h.state.snapshot())
    assert restored.events() == h.state.events()
    assert restored.last_event_seq == 2
    h2 = Harness(restored)
    h2.apply(commands_pb2.CordonNode(node_id="n1"))
    assert restored.events(since_seq=2)[0].seq == 3


def test_counts():
    h = Harness()
    h.add_node("n1")
    h.add_node("n2")
    h.set_status("n2", NS.NODE_STATUS_DOWN)
    h.submit("j1", count=3)
    h.place({"j1.0": "n1"})
    assert h.state.counts() == {
        "nodes_total": 2,
        "nodes_ready": 1,
        "jobs_total": 1,
        "jobs_all": 1,
        "tasks_by_state": {"assigned": 1, "pending": 2},
    }


def test_results_are_copies():
    h = Harness()
    node = h.add_node("n1")
    node.labels["x"] = "y"
    job = h.submit("j1")
    job.spec.name = "changed"
    assert "x" not in h.state.node("n1").labels
    assert h.state.job("j1").spec.name == "web"
    assert not isinstance(job, LeptonError)


_DESIRED = (TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING)
_FINISHED = (types_pb2.JOB_STATE_COMPLETE, types_pb2.JOB_STATE_FAILED, types_pb2.JOB_STATE_CANCELLED)


def _check_invariants(state: ClusterState) -> None:
    jobs = {j.id: j for j in state.jobs(include_finished=True)}
    for t in state.tasks():
        if t.state == TS.TASK_STATE_PENDING:
            assert t.node_id == "" and t.migrating_to == "", t
        if t.migrating_to:
            assert t.state in _DESIRED and t.migrating_to != t.node_id, t
        if jobs[t.job_id].state in _FINISHED:
            assert t.state not in _DESIRED, t
    # white-box: the per-job state counters behind job-state derivation match the tasks
    for jid, counts in state._s.job_counts.items():
        actual: dict[int, int] = {}
        for t in state.tasks(job_id=jid):
            actual[t.state] = actual.get(t.state, 0) + 1
        assert {k: v for k, v in counts.items() if v} == actual, jid
    where: dict[str, list[str]] = {}
    for n in state.nodes():
        for a in state.desired_for_node(n.id)[1]:
            where.setdefault(a.task_id, []).append(n.id)
    for tid, nodes in where.items():
        t = state.task(tid)
        assert sorted(nodes) == sorted({t.node_id, t.migrating_to} - {""}), (t, nodes)


@pytest.mark.parametrize("seed", [9, 10])
def test_invariants_hold_after_every_entry(seed):
    h = _random_history(seed, steps=150)
    state = ClusterState()
    for index, term, data in h.log:
        state.apply(index, term, data)
        _check_invariants(state)


def test_internal_error_in_a_handler_becomes_an_error_result(monkeypatch):
    from controller.state import cluster

    def boom(store, ctx, body):
        raise RuntimeError("bug")

    monkeypatch.setitem(cluster._HANDLERS, "cordon_node", boom)
    h = Harness()
    h.add_node("n1")
    result = h.apply(commands_pb2.CordonNode(node_id="n1"))
    assert isinstance(result, LeptonError) and "internal error" in str(result)


def test_state_modules_use_no_clock_randomness_or_pickle():
    from pathlib import Path

    import controller.state as pkg

    forbidden = ("import time", "import random", "import uuid", "import pickle", "datetime", "os.environ")
    for path in Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for word in forbidden:
            assert word not in text, f"{path.name} uses {word!r}"
