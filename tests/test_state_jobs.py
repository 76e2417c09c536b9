"""Job commands and the task lifecycle: submit (idempotent, unique names), cancel,
task updates with the restart policy, and the derived job state."""

from __future__ import annotations

import pytest

from controller.state.testing import Harness, job_spec
from lepton.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from lepton.v1 import commands_pb2, types_pb2

TS = types_pb2.TaskState
JS = types_pb2.JobState
RM = types_pb2.RestartMode


def test_submit_creates_pending_tasks():
    h = Harness()
    job = h.submit("j1", name="train", count=3, priority=7)
    assert job.id == "j1" and job.state == JS.JOB_STATE_PENDING and job.submit_index == 1
    tasks = h.state.tasks(job_id="j1")
    assert [t.id for t in tasks] == ["j1.0", "j1.1", "j1.2"]
    assert all(t.state == TS.TASK_STATE_PENDING and t.attempt == 1 and t.priority == 7 for t in tasks)
    assert all(t.job_name == "train" for t in tasks)
    assert h.state.job("train").id == "j1"
    assert [e.type for e in h.state.events()] == ["job.submitted"]


def test_submit_is_idempotent_by_request_id():
    h = Harness()
    first = h.submit("j1", name="train", request_id="req-1")
    again = h.submit("j2", name="train", request_id="req-1")
    assert again.id == first.id == "j1"
    assert len(h.state.jobs(include_finished=True)) == 1
    assert len(h.state.tasks()) == 1
    assert h.state.job_for_request("req-1").id == "j1"


SUBMIT_REJECTIONS = [
    ("duplicate active name", dict(job_id="j2", name="web"), AlreadyExists),
    ("duplicate job id", dict(job_id="j1", name="other"), AlreadyExists),
]


@pytest.mark.parametrize(("case", "kw", "err"), SUBMIT_REJECTIONS, ids=[c[0] for c in SUBMIT_REJECTIONS])
def test_submit_rejections(case, kw, err):
    h = Harness()
    h.submit("j1", name="web")
    before = h.state.digest()
    assert isinstance(h.submit(kw["job_id"], name=kw["name"]), err)
    assert h.state.digest() == before


def test_name_is_free_again_after_the_job_finishes():
    h = Harness()
    h.add_node("n1")
    h.submit("j1", name="web")
    h.apply(commands_pb2.CancelJob(job_id="web"))
    job = h.submit("j2", name="web")
    assert job.id == "j2"
    assert h.state.job("web").id == "j2"  # the active one wins by name
    assert [j.id for j in h.state.jobs()] == ["j2"]
    assert [j.id for j in h.state.jobs(include_finished=True)] == ["j1", "j2"]


def test_cancel_job_stops_tasks_and_empties_desired_sets():
    h = Harness()
    h.add_node("n1")
    h.submit("j1", count=3)
    h.run({"j1.0": "n1"})
    h.place({"j1.1": "n1"})
    job = h.apply(commands_pb2.CancelJob(job_id="j1", reason="user asked"))
    assert job.state == JS.JOB_STATE_CANCELLED
    states = {t.id: t.state for t in h.state.tasks(job_id="j1")}
    assert states == {
        "j1.0": TS.TASK_STATE_STOPPING,
        "j1.1": TS.TASK_STATE_STOPPING,
        "j1.2": TS.TASK_STATE_STOPPED,
    }
    assert h.state.desired_for_node("n1")[1] == []
    # stopping tasks still hold their resources until the agent confirms
    assert h.state.node("n1").allocated.cpu_millis == 2000
    h.report("j1.0", TS.TASK_STATE_STOPPED, exit_code=143)
    assert h.state.task("j1.0").state == TS.TASK_STATE_STOPPED
    assert h.state.node("n1").allocated.cpu_millis == 1000
    assert h.state.pending_tasks() == []
    assert h.state.job("j1").state == JS.JOB_STATE_CANCELLED
    # cancelling twice is a no-op
    assert h.apply(commands_pb2.CancelJob(job_id="j1")).state == JS.JOB_STATE_CANCELLED


CANCEL_REJECTIONS = [
    ("unknown job", "nope", NotFound),
]


@pytest.mark.parametrize(("case", "job_id", "err"), CANCEL_REJECTIONS, ids=[c[0] for c in CANCEL_REJECTIONS])
def test_cancel_rejections(case, job_id, err):
    h = Harness()
    assert isinstance(h.apply(commands_pb2.CancelJob(job_id=job_id)), err)


def test_cancel_of_completed_job_is_rejected():
    h = Harness()
    h.add_node("n1")
    h.submit("j1", batch=True)
    h.run({"j1.0": "n1"})
    h.report("j1.0", TS.TASK_STATE_SUCCEEDED)
    assert isinstance(h.apply(commands_pb2.CancelJob(job_id="j1")), FailedPrecondition)


def test_task_progress_and_job_state():
    h = Harness()
    h.add_node("n1")
    h.submit("j1", count=2, batch=True)
    h.place({"j1.0": "n1", "j1.1": "n1"})
    assert h.state.job("j1").state == JS.JOB_STATE_PENDING
    h.report("j1.0", TS.TASK_STATE_STARTING)
    assert h.state.task("j1.0").state == TS.TASK_STATE_STARTING
    h.report("j1.0", TS.TASK_STATE_RUNNING)
    assert h.state.job("j1").state == JS.JOB_STATE_RUNNING
    h.report("j1.0", TS.TASK_STATE_SUCCEEDED)
    assert h.state.job("j1").state == JS.JOB_STATE_RUNNING
    h.report("j1.1", TS.TASK_STATE_RUNNING)
    h.report("j1.1", TS.TASK_STATE_SUCCEEDED)
    job = h.state.job("j1")
    assert job.state == JS.JOB_STATE_COMPLETE
    assert h.state.jobs() == []
    assert "job.completed" in [e.type for e in h.state.events()]
    assert h.state.node("n1").allocated.cpu_millis == 0


def _policy(mode, max_restarts=0):
    return types_pb2.RestartPolicy(mode=mode, max_restarts=max_restarts)


# (case, batch, policy, reported state, restarts already done, expect restart?, terminal state if not)
RESTART_CASES = [
    ("batch default: failure restarts", True, None, TS.TASK_STATE_FAILED, 0, True, None),
    (
        "batch default: success is final",
        True,
        None,
        TS.TASK_STATE_SUCCEEDED,
        0,
        False,
        TS.TASK_STATE_SUCCEEDED,
    ),
    ("batch default: 3 restarts max", True, None, TS.TASK_STATE_FAILED, 3, False, TS.TASK_STATE_FAILED),
    ("service default: success restarts", False, None, TS.TASK_STATE_SUCCEEDED, 0, True, None),
    ("service default: unlimited", False, None, TS.TASK_STATE_FAILED, 50, True, None),
    ("never", False, _policy(RM.RESTART_MODE_NEVER), TS.TASK_STATE_FAILED, 0, False, TS.TASK_STATE_FAILED),
    (
        "on_failure max 1",
        True,
        _policy(RM.RESTART_MODE_ON_FAILURE, 1),
        TS.TASK_STATE_FAILED,
        1,
        False,
        TS.TASK_STATE_FAILED,
    ),
    (
        "always max 2 reached",
        True,
        _policy(RM.RESTART_MODE_ALWAYS, 2),
        TS.TASK_STATE_SUCCEEDED,
        2,
        False,
        TS.TASK_STATE_SUCCEEDED,
    ),
    (
        "always batch success restarts",
        True,
        _policy(RM.RESTART_MODE_ALWAYS),
        TS.TASK_STATE_SUCCEEDED,
        0,
        True,
        None,
    ),
    ("unexpected stop on_failure restarts", True, None, TS.TASK_STATE_STOPPED, 0, True, None),
]


@pytest.mark.parametrize(
    ("case", "batch", "policy", "reported", "done", "restarts", "terminal"),
    RESTART_CASES,
    ids=[c[0] for c in RESTART_CASES],
)
def test_restart_policy(case, batch, policy, reported, done, restarts, terminal):
    h = Harness()
    h.add_node("n1")
    h.submit("j1", spec=job_spec(batch=batch, restart=policy))
    for _ in range(done):  # burn restarts with failures
        h.run({"j1.0": "n1"})
        h.report("j1.0", TS.TASK_STATE_FAILED, exit_code=1)
    assert h.state.task("j1.0").restarts == done
    h.run({"j1.0": "n1"})
    attempt = h.state.task("j1.0").attempt
    h.report("j1.0", reported, exit_code=0 if reported == TS.TASK_STATE_SUCCEEDED else 1)
    t = h.state.task("j1.0")
    if restarts:
        assert t.state == TS.TASK_STATE_PENDING
        assert t.attempt == attempt + 1
        assert t.restarts == done + 1
        assert t.previous_node_id == "n1"
        assert h.state.desired_for_node("n1")[1] == []
    else:
        assert t.state == terminal
        assert t.attempt == attempt
        assert t.finished_at_ms > 0
        assert h.state.job("j1").state in (JS.JOB_STATE_COMPLETE, JS.JOB_STATE_FAILED)


UPDATE_IGNORED = [
    ("stale attempt", dict(attempt=7), TS.TASK_STATE_RUNNING),
    ("wrong node", dict(node_id="n2"), TS.TASK_STATE_RUNNING),
    ("starting after running", dict(), TS.TASK_STATE_STARTING),
]


@pytest.mark.parametrize(("case", "kw", "state"), UPDATE_IGNORED, ids=[c[0] for c in UPDATE_IGNORED])
def test_updates_about_other_copies_are_ignored(case, kw, state):
    h = Harness()
    h.add_node("n1")
    h.add_node("n2")
    h.submit("j1")
    h.run({"j1.0": "n1"})
    before = h.state.digest()
    assert h.report("j1.0", state, **kw) is None
    assert h.state.digest() == before


UPDATE_REJECTED = [
    (
        "unknown task",
        commands_pb2.TaskUpdate(task_id="zz.0", attempt=1, state=TS.TASK_STATE_RUNNING),
        NotFound,
    ),
    (
        "pending is not reportable",
        commands_pb2.TaskUpdate(task_id="j1.0", attempt=1, state=TS.TASK_STATE_PENDING),
        InvalidArgument,
    ),
    (
        "lost is not reportable",
        commands_pb2.TaskUpdate(task_id="j1.0", attempt=1, state=TS.TASK_STATE_LOST),
        InvalidArgument,
    ),
]


@pytest.mark.parametrize(("case", "body", "err"), UPDATE_REJECTED, ids=[c[0] for c in UPDATE_REJECTED])
def test_update_rejections(case, body, err):
    h = Harness()
    h.submit("j1")
    before = h.state.digest()
    assert isinstance(h.apply(body), err)
    assert h.state.digest() == before


def test_task_updates_batch_applies_each_in_order_and_reports_each_error():
    """TaskUpdates: the agents' updates of one batch, each as its own TaskUpdate would apply."""
    one, batch = Harness(), Harness()
    for h in (one, batch):
        h.add_node("n1")
        h.add_node("n2")
        h.submit("j1", count=3, batch=True)
        h.place({"j1.0": "n1", "j1.1": "n2", "j1.2": "n1"})
    U = commands_pb2.TaskUpdate  # noqa: N806
    updates = [
        U(task_id="j1.0", attempt=1, state=TS.TASK_STATE_RUNNING, node_id="n1"),
        U(task_id="zz.9", attempt=1, state=TS.TASK_STATE_RUNNING),  # unknown task
        U(task_id="j1.1", attempt=1, state=TS.TASK_STATE_RUNNING, node_id="n2"),
        U(task_id="j1.1", attempt=1, state=TS.TASK_STATE_LOST),  # not reportable
        U(task_id="j1.0", attempt=1, state=TS.TASK_STATE_SUCCEEDED, node_id="n1"),  # after its RUNNING
        U(task_id="j1.2", attempt=1, state=TS.TASK_STATE_RUNNING, node_id="n2"),  # not its node: ignored
    ]
    singles = [one.apply(u) for u in updates]
    results = batch.apply(commands_pb2.TaskUpdates(updates=updates))
    assert [type(r) for r in results] == [
        type(None),
        NotFound,
        type(None),
        InvalidArgument,
        type(None),
        type(None),
    ]
    assert isinstance(singles[1], NotFound) and isinstance(singles[3], InvalidArgument)
    for tid in ("j1.0", "j1.1", "j1.2"):
        a, b = one.state.task(tid), batch.state.task(tid)
        assert (a.state, a.node_id, a.attempt) == (b.state, b.node_id, b.attempt), tid
    assert batch.state.task("j1.0").state == TS.TASK_STATE_SUCCEEDED
    assert batch.state.task("j1.1").state == TS.TASK_STATE_RUNNING
    assert batch.state.task("j1.2").state == TS.TASK_STATE_ASSIGNED
    assert one.state.job("j1").state == batch.state.job("j1").state
