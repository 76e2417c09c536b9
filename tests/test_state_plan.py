"""CommitPlan: fencing, per-item skips, preemption, resource accounting."""

from __future__ import annotations

import pytest

from controller.state.testing import Harness, job_spec, resources
from lepton.errors import FailedPrecondition
from lepton.v1 import commands_pb2, types_pb2

TS = types_pb2.TaskState
NS = types_pb2.NodeStatus


def _cluster() -> Harness:
    h = Harness(term=5)
    h.add_node("n1", cpu=4000, mem=8 * 2**30, net=1000)
    h.add_node("n2", cpu=4000, mem=8 * 2**30, net=1000)
    return h


def test_plan_assigns_and_accounts_resources():
    h = _cluster()
    h.submit("j1", count=2, res=resources(cpu=1500, mem=2**30, net=100))
    res = h.place({"j1.0": "n1", "j1.1": "n1"})
    assert res.applied == ["j1.0", "j1.1"] and res.skipped == [] and res.preempted == []
    node = h.state.node("n1")
    assert (node.allocated.cpu_millis, node.allocated.memory_bytes, node.allocated.network_mbps) == (
        3000,
        2**31,
        200,
    )
    version, desired = h.state.desired_for_node("n1")
    assert version == h.index
    assert [(a.task_id, a.attempt, a.job_name) for a in desired] == [("j1.0", 1, "web"), ("j1.1", 1, "web")]
    assert desired[0].template.command == "sleep 100"
    assert [e.type for e in h.state.events(types=["task."])] == ["task.placed", "task.placed"]
    assert h.state.tasks(node_id="n1", state=TS.TASK_STATE_ASSIGNED)[0].id == "j1.0"


FENCING = [
    ("older term", 4),
    ("newer term", 6),
    ("unstamped", 0),
]


@pytest.mark.parametrize(("case", "plan_term"), FENCING, ids=[c[0] for c in FENCING])
def test_plan_from_another_term_is_rejected_whole(case, plan_term):
    h = _cluster()
    h.submit("j1", count=2)
    tasks_before = [t.SerializeToString() for t in h.state.tasks()]
    res = h.place({"j1.0": "n1", "j1.1": "n2"}, plan_term=plan_term)
    assert isinstance(res, FailedPrecondition)
    assert "deposed leader" in str(res)
    assert [t.SerializeToString() for t in h.state.tasks()] == tasks_before
    assert h.state.events(types=["plan.rejected"])


def _skip_reason(h: Harness, assignment: commands_pb2.Assignment) -> str:
    res = h.apply(commands_pb2.CommitPlan(assignments=[assignment]))
    assert res.applied == []
    return res.skipped[0][1]


SKIPS = [
    ("unknown task", dict(task_id="zz.0", node_id="n1", expected_attempt=1), "unknown task"),
    ("unknown node", dict(task_id="j1.0", node_id="n9", expected_attempt=1), "unknown node"),
    ("wrong attempt", dict(task_id="j1.0", node_id="n1", expected_attempt=2), "attempt"),
    ("not pending", dict(task_id="j1.1", node_id="n1", expected_attempt=1), "no longer pending"),
    (
        "expects running",
        dict(task_id="j1.0", node_id="n1", expected_attempt=1, expected_state=TS.TASK_STATE_RUNNING),
        "only pending",
    ),
    ("cordoned", dict(task_id="j1.0", node_id="n2", expected_attempt=1), "cordoned"),
    ("too big", dict(task_id="big.0", node_id="n1", expected_attempt=1), "insufficient cpu"),
]


@pytest.mark.parametrize(("case", "kw", "needle"), SKIPS, ids=[c[0] for c in SKIPS])
def test_invalid_assignments_are_skipped_without_change(case, kw, needle):
    h = _cluster()
    h.submit("j1", count=2)
    h.submit("big", spec=job_spec("big", res=resources(cpu=5000)))
    h.place({"j1.1": "n1"})
    h.apply(commands_pb2.CordonNode(node_id="n2"))
    tasks_before = [t.SerializeToString() for t in h.state.tasks()]
    assert needle in _skip_reason(h, commands_pb2.Assignment(**kw))
    assert [t.SerializeToString() for t in h.state.tasks()] == tasks_before
    assert h.state.events(types=["plan.skipped"])


def test_fit_is_checked_against_earlier_items_of_the_same_plan():
    h = _cluster()
    h.submit("j1", count=3, res=resources(cpu=2000, mem=0))
    res = h.place({"j1.0": "n1", "j1.1": "n1", "j1.2": "n1"})
    assert res.applied == ["j1.0", "j1.1"]
    assert res.skipped == [("j1.2", "insufficient cpu (need 2000, free 0)")]
    assert h.state.task("j1.2").state == TS.TASK_STATE_PENDING


def test_network_is_a_binding_dimension():
    h = _cluster()
    h.submit("j1", count=2, res=resources(cpu=100, mem=0, net=600))
    res = h.place({"j1.0": "n1", "j1.1": "n1"})
    assert res.skipped == [("j1.1", "insufficient network (need 600, free 400)")]


def test_down_node_is_not_schedulable():
    h = _cluster()
    h.submit("j1")
    h.set_status("n1", NS.NODE_STATUS_DOWN)
    res = h.place({"j1.0": "n1"})
    assert res.skipped == [("j1.0", "node n1 is down")]


def _preempt(victim: str, attempt: int, node: str, by: str) -> commands_pb2.Preemption:
    return commands_pb2.Preemption(task_id=victim, expected_attempt=attempt, node_id=node, preempted_by=by)


def test_preemption_evicts_lower_priority_victims():
    h = _cluster()
    h.submit("low", spec=job_spec("low", count=2, priority=1, res=resources(cpu=2000, mem=0)))
    h.run({"low.0": "n1", "low.1": "n1"})
    h.submit("high", spec=job_spec("high", priority=9, res=resources(cpu=2000, mem=0)))
    res = h.place({"high.0": "n1"}, preemptions=[_preempt("low.1", 1, "n1", "high.0")])
    assert res.applied == ["high.0"] and res.preempted == ["low.1"]
    victim = h.state.task("low.1")
    assert victim.state == TS.TASK_STATE_PENDING and victim.attempt == 2
    assert victim.reason == "preempted by high.0"
    assert [a.task_id for a in h.state.desired_for_node("n1")[1]] == ["high.0", "low.0"]
    assert h.state.events(types=["task.preempted"])[0].task_id == "low.1"
    # pending order: priority desc, then submit order
    h.submit("mid", spec=job_spec("mid", priority=5))
    assert [t.id for t in h.state.pending_tasks()] == ["mid.0", "low.1"]


PREEMPT_SKIPS = [
    ("victim same priority", "eq", 5, "lower priority"),
    ("victim on other node", "other", 1, "not on node"),
    ("victim stale attempt", "stale", 1, "changed since planned"),
]


@pytest.mark.parametrize(
    ("case", "variant", "victim_prio", "needle"), PREEMPT_SKIPS, ids=[c[0] for c in PREEMPT_SKIPS]
)
def test_invalid_preemption_skips_its_assignment(case, variant, victim_prio, needle):
    h = _cluster()
    h.submit("low", spec=job_spec("low", priority=victim_prio, res=resources(cpu=4000, mem=0)))
    node = "n2" if variant == "other" else "n1"
    h.run({"low.0": node})
    h.submit("high", spec=job_spec("high", priority=5, res=resources(cpu=4000, mem=0)))
    if variant == "other":  # n1 full by something else so the victim really is needed there
        h.submit("fill", spec=job_spec("fill", priority=9, res=resources(cpu=4000, mem=0)))
        h.run({"fill.0": "n1"})
    attempt = 9 if variant == "stale" else 1
    res = h.place({"high.0": "n1"}, preemptions=[_preempt("low.0", attempt, "n1", "high.0")])
    assert res.applied == [] and res.preempted == []
    assert needle in res.skipped[0][1]
    assert h.state.task("low.0").state == TS.TASK_STATE_RUNNING


def test_orphan_preemption_is_skipped():
    h = _cluster()
    h.submit("low", spec=job_spec("low", priority=1))
    h.run({"low.0": "n1"})
    res = h.apply(commands_pb2.CommitPlan(preemptions=[_preempt("low.0", 1, "n1", "ghost.0")]))
    assert res.skipped == [("low.0", "preemption for 'ghost.0', which is not in the plan")]
    assert h.state.task("low.0").state == TS.TASK_STATE_RUNNING
