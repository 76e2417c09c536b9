"""MigrateTask / CancelMigration: make-before-break for services, stop-then-start for batch."""

from __future__ import annotations

import pytest

from controller.state.testing import Harness, job_spec, resources
from lepton.errors import FailedPrecondition, InvalidArgument, NotFound
from lepton.v1 import commands_pb2, types_pb2

TS = types_pb2.TaskState
NS = types_pb2.NodeStatus


def _running(batch: bool = False) -> Harness:
    h = Harness(term=2)
    h.add_node("src", cpu=4000)
    h.add_node("dst", cpu=4000)
    h.submit("j1", spec=job_spec(batch=batch, res=resources(cpu=1000, mem=0), migratable=True))
    h.run({"j1.0": "src"})
    return h


def _migrate(h: Harness, target: str = "dst", **kw):
    attempt = kw.pop("expected_attempt", h.state.task("j1.0").attempt)
    plan_term = kw.pop("plan_term", None)
    body = commands_pb2.MigrateTask(
        task_id="j1.0", expected_attempt=attempt, target_node_id=target, reason="rebalance", **kw
    )
    return h.apply(body, plan_term=plan_term)


def _desired(h: Harness, node: str) -> list[tuple[str, int]]:
    return [(a.task_id, a.attempt) for a in h.state.desired_for_node(node)[1]]


def test_make_before_break_sequence():
    h = _running()
    v_src = h.state.desired_version("src")
    t = _migrate(h)
    assert t.migrating_to == "dst" and t.node_id == "src" and t.state == TS.TASK_STATE_RUNNING
    # both copies are desired, each with its own attempt; both hold resources
    assert _desired(h, "src") == [("j1.0", 1)]
    assert _desired(h, "dst") == [("j1.0", 2)]
    assert h.state.desired_version("src") == v_src  # the source's set did not change
    assert h.state.node("dst").allocated.cpu_millis == 1000
    assert [m.id for m in h.state.migrations()] == ["j1.0"]
    assert [t.id for t in h.state.tasks(node_id="dst")] == ["j1.0"]
    # the target copy starting changes nothing for the source
    h.report("j1.0", TS.TASK_STATE_STARTING, attempt=2, node_id="dst")
    assert _desired(h, "src") == [("j1.0", 1)]
    # running on the target: the old copy leaves the source's desired set
    t = h.report("j1.0", TS.TASK_STATE_RUNNING, attempt=2, node_id="dst")
    assert (t.node_id, t.attempt, t.migrating_to, t.previous_node_id) == ("dst", 2, "", "src")
    assert _desired(h, "src") == []
    assert _desired(h, "dst") == [("j1.0", 2)]
    assert h.state.desired_version("src") == h.index
    assert h.state.node("src").allocated.cpu_millis == 0
    assert h.state.events(types=["task.migrated"])[0].message == "task j1.0 moved from src to dst"
    # the old copy's exit report is now stale
    assert h.report("j1.0", TS.TASK_STATE_STOPPED, attempt=1) is None
    assert h.state.task("j1.0").state == TS.TASK_STATE_RUNNING


def test_failed_target_copy_abandons_the_move():
    h = _running()
    _migrate(h)
    h.report("j1.0", TS.TASK_STATE_FAILED, attempt=2, exit_code=1)
    t = h.state.task("j1.0")
    assert (t.node_id, t.attempt, t.migrating_to, t.state) == ("src", 1, "", TS.TASK_STATE_RUNNING)
    assert _desired(h, "dst") == []
    assert h.state.events(types=["task.migration_failed"])


def test_old_copy_exit_during_move_promotes_target():
    h = _running()
    _migrate(h)
    h.report("j1.0", TS.TASK_STATE_STARTING, attempt=2)
    h.report("j1.0", TS.TASK_STATE_FAILED, attempt=1, exit_code=137)
    t = h.state.task("j1.0")
    assert (t.node_id, t.attempt, t.state, t.migrating_to) == ("dst", 2, TS.TASK_STATE_STARTING, "")
    assert _desired(h, "src") == []


def test_source_down_during_move_promotes_target():
    h = _running()
    _migrate(h)
    h.set_status("src", NS.NODE_STATUS_DOWN)
    t = h.state.task("j1.0")
    assert (t.node_id, t.attempt, t.state) == ("dst", 2, TS.TASK_STATE_ASSIGNED)
    assert h.state.stale_tasks("src") == [("j1.0", 1)]


def test_target_down_during_move_abandons_it():
    h = _running()
    _migrate(h)
    h.set_status("dst", NS.NODE_STATUS_DOWN)
    t = h.state.task("j1.0")
    assert (t.node_id, t.attempt, t.migrating_to) == ("src", 1, "")
    assert h.state.stale_tasks("dst") == [("j1.0", 2)]


def test_cancel_migration():
    h = _running()
    _migrate(h)
    t = h.apply(commands_pb2.CancelMigration(task_id="j1.0", reason="operator"))
    assert t.migrating_to == "" and t.node_id == "src"
    assert _desired(h, "dst") == []
    assert isinstance(h.apply(commands_pb2.CancelMigration(task_id="j1.0")), FailedPrecondition)
    # a late report from the abandoned target copy is stale
    assert h.report("j1.0", TS.TASK_STATE_RUNNING, attempt=2) is None
    # a new move gets a fresh attempt, distinct from the abandoned copy's
    _migrate(h)
    assert _desired(h, "dst") == [("j1.0", 3)]


def test_cancel_job_during_move_drops_target():
    h = _running()
    _migrate(h)
    h.apply(commands_pb2.CancelJob(job_id="j1"))
    assert _desired(h, "dst") == [] and _desired(h, "src") == []
    assert h.state.task("j1.0").state == TS.TASK_STATE_STOPPING


def test_batch_task_stops_then_starts_with_preferred_node():
    h = _running(batch=True)
    t = _migrate(h)
    assert (t.state, t.attempt, t.node_id, t.migrating_to) == (TS.TASK_STATE_PENDING, 2, "", "")
    assert h.state.preferred_node("j1.0") == "dst"
    assert _desired(h, "src") == []
    h.place({"j1.0": "dst"})
    assert h.state.preferred_node("j1.0") == ""


MIGRATE_REJECTIONS = [
    ("unknown task", dict(task_id="zz.0"), NotFound),
    ("unknown target", dict(target_node_id="nope"), NotFound),
    ("same node", dict(target_node_id="src"), InvalidArgument),
    ("stale attempt", dict(expected_attempt=5), FailedPrecondition),
    ("old term", dict(plan_term=1), FailedPrecondition),
    ("target cordoned", dict(target_node_id="cord"), FailedPrecondition),
    ("does not fit", dict(target_node_id="tiny"), FailedPrecondition),
    ("already migrating", dict(twice=True), FailedPrecondition),
    ("not placed", dict(task_id="j2.0"), FailedPrecondition),
]


@pytest.mark.parametrize(("case", "kw", "err"), MIGRATE_REJECTIONS, ids=[c[0] for c in MIGRATE_REJECTIONS])
def test_migrate_rejections(case, kw, err):
    h = _running()
    h.add_node("cord")
    h.apply(commands_pb2.CordonNode(node_id="cord"))
    h.add_node("tiny", cpu=500)
    h.submit("j2", name="other")
    if kw.pop("twice", False):
        _migrate(h)
    before = h.state.digest()
    body = commands_pb2.MigrateTask(
        task_id=kw.get("task_id", "j1.0"),
        expected_attempt=kw.get("expected_attempt", 1),
        target_node_id=kw.get("target_node_id", "dst"),
    )
    res = h.apply(body, plan_term=kw.get("plan_term"))
    assert isinstance(res, err), res
    if case != "old term":  # fencing leaves a plan.rejected event behind, nothing else
        assert h.state.digest() == before


def test_cancel_migration_of_unknown_task():
    h = _running()
    assert isinstance(h.apply(commands_pb2.CancelMigration(task_id="zz.0")), NotFound)
