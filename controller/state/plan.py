"""CommitPlan: applying one placement round, with fencing.

Semantics (chosen so that one stale item does not waste a 50,000-task round):
- Fencing is all-or-nothing: a plan whose plan_term differs from the term of
  the entry that carries it was made by a deposed leader. The whole plan is
  rejected (FailedPrecondition, event plan.rejected) and nothing changes.
- Otherwise every assignment is checked against the state as it stands after
  the earlier assignments of the same plan, in plan order. An assignment
  that no longer holds (task not PENDING at the expected attempt, node gone,
  not schedulable, does not fit) is skipped, together with the preemptions
  that were meant to make room for it; the rest is applied. Preemptions are
  tied to their assignment by `preempted_by` and applied only if that
  assignment is. Skips are deterministic (they depend only on state and the
  plan) and reported in the PlanResult and one plan.skipped event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lepton.errors import FailedPrecondition
from lepton.v1 import commands_pb2

from .lifecycle import requeue
from .store import DESIRED, JOB_FINISHED, TS, ApplyContext, Store, free_resources, misfit, node_schedulable


@dataclass(slots=True)
class PlanResult:
    """What a committed plan did. `skipped` holds (task id, reason) in plan order."""

    applied: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def check_fencing(store: Store, ctx: ApplyContext, what: str) -> None:
    if ctx.plan_term != ctx.term:
        msg = f"{what} planned in term {ctx.plan_term} but committed in term {ctx.term}: planned by a deposed leader"
        store.emit(ctx, "plan.rejected", msg)
        raise FailedPrecondition(msg)


def commit_plan(store: Store, ctx: ApplyContext, body: commands_pb2.CommitPlan) -> PlanResult:
    check_fencing(store, ctx, "plan")
    result = PlanResult()
    victims_of: dict[str, list[commands_pb2.Preemption]] = {}
    for p in body.preemptions:
        victims_of.setdefault(p.preempted_by, []).append(p)
    free: dict[str, list[int]] = {}
    used: set[str] = set()  # task ids already consumed by this plan (as assignee or victim)
    for a in body.assignments:
        victims = victims_of.pop(a.task_id, [])
        reason = _check(store, a, victims, free, used)
        if reason:
            result.skipped.append((a.task_id, reason))
            continue
        rec = store.tasks[a.task_id]
        for p in victims:
            _evict(store, ctx, p, a.task_id, free)
            used.add(p.task_id)
            result.preempted.append(p.task_id)
        _assign(store, ctx, rec, a.node_id)
        used.add(a.task_id)
        _take(free[a.node_id], rec.task.resources)
        result.applied.append(a.task_id)
    for by in sorted(victims_of):
        for p in victims_of[by]:
            result.skipped.append((p.task_id, f"preemption for {by!r}, which is not in the plan"))
    if result.skipped:
        first = "; ".join(f"{tid}: {why}" for tid, why in result.skipped[:3])
        store.emit(ctx, "plan.skipped", f"{len(result.skipped)} plan item(s) skipped ({first})")
    return result


def _check(
    store: Store,
    a: commands_pb2.Assignment,
    victims: list[commands_pb2.Preemption],
    free: dict[str, list[int]],
    used: set[str],
) -> str:
    """'' when the assignment (with its preemptions) can be applied now, else why not."""
    rec = store.tasks.get(a.task_id)
    if rec is None:
        return "unknown task"
    if a.task_id in used:
        return "task appears twice in the plan"
    t = rec.task
    if a.expected_state not in (TS.TASK_STATE_UNSPECIFIED, TS.TASK_STATE_PENDING):
        return "only pending tasks can be assigned"
    if t.state != TS.TASK_STATE_PENDING:
        return f"task is no longer pending ({TS.Name(t.state)})"
    if t.attempt != a.expected_attempt:
        return f"task attempt is {t.attempt}, plan expected {a.expected_attempt}"
    job = store.jobs.get(t.job_id)
    if job is None or job.state in JOB_FINISHED:
        return "job is finished"
    node = store.nodes.get(a.node_id)
    if node is None:
        return f"unknown node {a.node_id!r}"
    why = node_schedulable(node)
    if why:
        return why
    if a.node_id not in free:
        free[a.node_id] = free_resources(store, a.node_id)
    avail = list(free[a.node_id])
    for p in victims:
        v = store.tasks.get(p.task_id)
        if v is None:
            return f"victim {p.task_id!r} unknown"
        if p.task_id in used or p.task_id == a.task_id:
            return f"victim {p.task_id} already used by this plan"
        vt = v.task
        if p.node_id != a.node_id or vt.node_id != a.node_id:
            return f"victim {p.task_id} is not on node {a.node_id}"
        if vt.state not in DESIRED or vt.attempt != p.expected_attempt:
            return f"victim {p.task_id} changed since planned"
        if vt.migrating_to:
            return f"victim {p.task_id} is migrating"
        if vt.priority >= t.priority:
            return f"victim {p.task_id} does not have a lower priority"
        _give(avail, vt.resources)
    return misfit(avail, t.resources)


def _assign(store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, node_id: str) -> None:
    before = store.begin_change(rec)
    t = rec.task
    t.node_id = node_id
    t.state = TS.TASK_STATE_ASSIGNED
    t.reason = ""
    t.updated_at_ms = ctx.time_ms
    rec.preferred_node = ""
    store.end_change(rec, before, ctx)
    ctx.jobs_changed.add(t.job_id)
    store.emit(
        ctx, "task.placed", f"task {t.id} placed on {node_id}", node_id=node_id, job_id=t.job_id, task_id=t.id
    )


def _evict(
    store: Store, ctx: ApplyContext, p: commands_pb2.Preemption, by: str, free: dict[str, list[int]]
) -> None:
    rec = store.tasks[p.task_id]
    _give(free[p.node_id], rec.task.resources)
    requeue(store, ctx, rec, f"preempted by {by}")
    store.emit(
        ctx,
        "task.preempted",
        f"task {p.task_id} on {p.node_id} preempted by {by}",
        node_id=p.node_id,
        job_id=rec.task.job_id,
        task_id=p.task_id,
    )


def _take(free: list[int], r) -> None:
    free[0] -= r.cpu_millis
    free[1] -= r.memory_bytes
    free[2] -= r.network_mbps
    free[3] -= r.gpus


def _give(free: list[int], r) -> None:
    free[0] += r.cpu_millis
    free[1] += r.memory_bytes
    free[2] += r.network_mbps
    free[3] += r.gpus
