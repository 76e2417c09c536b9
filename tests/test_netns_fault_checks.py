"""The fault suite's checker must catch what it claims to catch (tests/support_netns/checks.py).

A checker that never fails proves nothing, so every violation kind is
planted here on purpose: in synthetic views (pure, fast) and, for the
process-table reader, with real processes in real namespaces.
"""

from __future__ import annotations

import pytest

from lepton.v1 import types_pb2
from tests.support_netns import checks
from tests.support_netns.checks import ClusterView, TaskProcess
from tests.support_netns.workload import History, Submitted, job_spec, wait_until

pytest_plugins = ["tests.support_netns.fixtures"]

RUNNING = types_pb2.TASK_STATE_RUNNING


def _world(count: int = 2):
    """One acknowledged job f-1 with `count` tasks running on n1, n2, ... and their processes."""
    spec = job_spec("f-1", count)
    history = History()
    history.submits["f-1"] = Submitted("f-1", "r1", spec, job_id="j1", outcome="acknowledged")
    job = types_pb2.Job(id="j1", spec=spec, state=types_pb2.JOB_STATE_RUNNING)
    tasks = [
        types_pb2.Task(id=f"j1.{i}", job_id="j1", index=i, node_id=f"n{i + 1}", state=RUNNING, attempt=1)
        for i in range(count)
    ]
    procs = [TaskProcess(f"n{i + 1}", 100 + i, f"j1.{i}", 1, "j1") for i in range(count)]
    view = ClusterView("c1", {"j1": job}, tasks, [], 10)
    return history, view, procs


def _checks_failed(history, view, procs) -> list[str]:
    return sorted({v.split(":")[0] for v in checks.check_history(history, view, procs).violations})


def test_a_consistent_world_has_no_violations():
    assert checks.check_history(*_world()).violations == []


def test_check_1_missing_job_spec_change_and_phantom():
    history, view, procs = _world()
    del view.jobs["j1"]
    assert "1" in _checks_failed(history, view, [])

    history, view, procs = _world()
    view.jobs["j1"].spec.template.args[:] = ["60"]
    assert _checks_failed(history, view, procs) == ["1"]

    history, view, procs = _world()
    view.jobs["j9"] = types_pb2.Job(id="j9", spec=job_spec("nobody-asked", 1))
    assert "1" in _checks_failed(history, view, procs)

    history, view, procs = _world()
    view.jobs["j2"] = types_pb2.Job(id="j2", spec=job_spec("f-1", 2), state=types_pb2.JOB_STATE_RUNNING)
    assert "1" in _checks_failed(history, view, procs)  # two jobs for one submit


def test_check_2_acknowledged_cancel_lost_or_still_running():
    history, view, procs = _world()
    history.cancels_acked.add("j1")
    assert "2" in _checks_failed(history, view, procs)  # job still RUNNING, processes alive

    view.jobs["j1"].state = types_pb2.JOB_STATE_CANCELLED
    for t in view.tasks:
        t.state = types_pb2.TASK_STATE_STOPPED
    assert _checks_failed(history, view, procs) == ["2"]  # processes survived the cancel
    assert _checks_failed(history, view, []) == []


def test_check_3_duplicates_missing_and_misplaced_copies():
    history, view, procs = _world()
    assert "3" in _checks_failed(history, view, [*procs, TaskProcess("n3", 200, "j1.0", 1, "j1")])
    assert "3" in _checks_failed(history, view, procs[1:])
    moved = [TaskProcess("n3", 100, "j1.0", 1, "j1"), procs[1]]
    assert _checks_failed(history, view, moved) == ["3", "5"]


def test_check_5_orphan_of_an_older_attempt():
    history, view, procs = _world()
    stale = TaskProcess("n4", 300, "j1.1", 0, "j1")
    assert "5" in _checks_failed(history, view, [*procs, stale])
    unknown = TaskProcess("n4", 301, "jx.0", 1, "jx")
    assert "5" in _checks_failed(history, view, [*procs, unknown])


def test_content_digest_ignores_leader_soft_state():
    node = types_pb2.Node(id="n1", connected=True, last_report_ms=5)
    plain = types_pb2.Node(id="n1")
    assert checks._content_digest([], [], [node]) == checks._content_digest([], [], [plain])
    assert checks._content_digest([], [], [node]) != checks._content_digest([], [], [])


@pytest.mark.netns
def test_task_processes_reads_real_namespaces(netns_cluster):
    net = netns_cluster(["n1", "n2"])
    env = {"LEPTON_TASK_ID": "j1.0", "LEPTON_TASK_ATTEMPT": "3", "LEPTON_JOB_ID": "j1"}
    # A task that forked: the child carries the same variables but is the same copy.
    net["n1"].run(["sh", "-c", "sleep 300 & exec sleep 301"], env=env)
    net["n2"].run(["sleep", "302"], env={**env, "LEPTON_TASK_ATTEMPT": "4"})
    net["n2"].run(["sleep", "303"])  # not a task

    def found():
        got = checks.task_processes(net, ["n1", "n2"])
        return sorted((p.host, p.task_id, p.attempt, p.job_id) for p in got)

    want = [("n1", "j1.0", 3, "j1"), ("n2", "j1.0", 4, "j1")]
    # Processes appear asynchronously after Popen; poll briefly (a bound, not a timing claim).
    assert wait_until(lambda: found() == want and len(net["n1"].pids()) == 2, 10, 0.1), found()
