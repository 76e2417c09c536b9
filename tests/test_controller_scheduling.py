"""The pure adapters of controller/scheduling.py: view building, requests, plan bodies, drain choices."""

from __future__ import annotations

from controller.placement import Assignment, Plan, Preemption
from controller.scheduling import build_view, drain_moves, plan_body, task_requests
from lepton.v1 import types_pb2

TS = types_pb2.TaskState
GiB = 2**30


def node(nid, cpu=4000, **kw):
    return types_pb2.Node(
        id=nid,
        capacity=types_pb2.Resources(cpu_millis=cpu, memory_bytes=8 * GiB, network_mbps=1000),
        reserve=types_pb2.Resources(cpu_millis=500),
        status=kw.pop("status", types_pb2.NODE_STATUS_READY),
        **kw,
    )


def task(tid, node_id="", state=TS.TASK_STATE_PENDING, cpu=1000, job="j1", **kw):
    return types_pb2.Task(
        id=tid, job_id=job, node_id=node_id, state=state, resources=types_pb2.Resources(cpu_millis=cpu), **kw
    )


def job(jid="j1", migratable=False, batch=False, distinct=False):
    return types_pb2.Job(
        id=jid,
        submit_index=7,
        spec=types_pb2.JobSpec(
            name=jid,
            priority=3,
            count=2,
            type=types_pb2.JOB_TYPE_BATCH if batch else types_pb2.JOB_TYPE_SERVICE,
            template=types_pb2.TaskTemplate(
                command="x",
                migratable=migratable,
                distinct_nodes=distinct,
                resources=types_pb2.Resources(cpu_millis=1000),
                constraints=[types_pb2.Constraint(key="zone", op="=", values=["a"])],
            ),
        ),
    )


def test_build_view_reserves_placed_and_migration_targets_and_uses_live_usage():
    nodes = [node("n1"), node("n2", cordoned=True), node("n3", status=types_pb2.NODE_STATUS_DOWN)]
    tasks = [
        task("t1", "n1", TS.TASK_STATE_RUNNING, migrating_to="n2"),
        task("t2", "n1", TS.TASK_STATE_STOPPING),
        task("t3", "n1", TS.TASK_STATE_SUCCEEDED),
        task("t4"),
    ]
    usage = {"n1": types_pb2.NodeUsage(cpu_millis=2500, memory_used_bytes=GiB, network_mbps=10, gpus_busy=0)}
    view = build_view(nodes, tasks, {"j1": job(migratable=True)}, usage)
    n1, n2, n3 = view.nodes
    assert n1.allocatable.cpu_millis == 3500
    assert n1.reserved.cpu_millis == 2000  # t1 + t2 (stopping still holds), not the finished t3
    assert n1.live_used.cpu_millis == 2500
    assert [t.task_id for t in n1.tasks] == ["t1", "t2"]
    assert not n1.tasks[0].migratable  # already moving
    assert n2.reserved.cpu_millis == 1000 and not n2.schedulable  # migration target holds resources
    assert not n3.ready


def test_task_requests_carry_priority_order_constraints_and_avoid_only_for_moves():
    pending = [task("j1.0", index=0, previous_node_id="n1"), task("j1.1", index=1, previous_node_id="n2")]
    reqs = task_requests(pending, {"j1": job()}, moved_off=["j1.1"])
    assert [r.priority for r in reqs] == [3, 3]
    assert reqs[0].order < reqs[1].order
    assert reqs[0].constraints[0].key == "zone"
    assert reqs[0].avoid_nodes == () and reqs[1].avoid_nodes == ("n2",)
    assert task_requests([task("x", job="gone")], {}) == []


def test_plan_body_prefix_keeps_only_preemptions_for_included_assignments():
    plan = Plan(
        assignments=(Assignment("a", "n1", 1.0), Assignment("b", "n2", 1.0)),
        preemptions=(Preemption("v1", "n1", "a"), Preemption("v2", "n2", "b")),
        unplaced=(),
    )
    pending = {"a": task("a", attempt=2), "b": task("b")}
    victims = {"v1": task("v1", "n1", TS.TASK_STATE_RUNNING, attempt=5)}
    full = plan_body(plan, pending, victims)
    assert [a.task_id for a in full.assignments] == ["a", "b"] and len(full.preemptions) == 2
    assert full.assignments[0].expected_attempt == 2
    assert full.preemptions[0].expected_attempt == 5
    first = plan_body(plan, pending, victims, limit=1)
    assert [a.task_id for a in first.assignments] == ["a"]
    assert [p.task_id for p in first.preemptions] == ["v1"]


def test_drain_moves_respect_max_parallel_priority_and_deadline():
    nodes = [node("n1", draining=True), node("n2")]
    tasks = [
        task("hi", "n1", TS.TASK_STATE_RUNNING, priority=9),
        task("lo", "n1", TS.TASK_STATE_RUNNING, priority=1),
        task("mid", "n1", TS.TASK_STATE_RUNNING, priority=5),
        task("elsewhere", "n2", TS.TASK_STATE_RUNNING),
    ]
    info = {"n1": (0, 2)}
    moves = drain_moves(nodes, tasks, {}, 1000, 1, lambda nid: info.get(nid, (0, 0)))
    assert [(t.id, n) for t, n in moves] == [("lo", "n1"), ("mid", "n1")]
    # One already in flight (moving make-before-break): only one more starts.
    tasks[1].migrating_to = "n2"
    assert [t.id for t, _ in drain_moves(nodes, tasks, {}, 1000, 1, lambda nid: info.get(nid, (0, 0)))] == [
        "mid"
    ]
    # Past the deadline everything left moves.
    info["n1"] = (500, 2)
    assert {t.id for t, _ in drain_moves(nodes, tasks, {}, 1000, 1, lambda nid: info.get(nid, (0, 0)))} == {
        "mid",
        "hi",
    }


def test_build_view_carries_each_placed_tasks_constraints_for_the_rebalancer():
    # A move must respect the same constraints as the first placement, so the
    # view hands them to plan_rebalance with every placed task.
    view = build_view(
        [node("n1")],
        [task("t1", "n1", TS.TASK_STATE_RUNNING)],
        {"j1": job(migratable=True, distinct=True)},
        {},
    )
    (placed,) = view.nodes[0].tasks
    assert [(c.key, c.op, c.values) for c in placed.constraints] == [("zone", "=", ("a",))]
    assert placed.distinct_nodes is True
