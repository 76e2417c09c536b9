"""The placement round: ClusterState + live usage -> placement model -> one CommitPlan.

`build_view()` and `task_requests()` are pure adapters from the replicated
records (and the leader's soft live usage) to controller.placement.model;
`placement_round()` runs place() once over every pending task and commits
all its assignments and preemptions as ONE Raft entry stamped with the term
it was planned in, so a deposed leader's plan is rejected by apply. The
loop runs a round when the state changes (a submit, a task update, a node
going down or returning) or capacity changes, and periodically as a fallback
because live usage moves without any command. Rescheduling needs nothing
special here: tasks of a down node come back as pending and are placed again.
Drains are driven from the same loop (`drain_round`): the next moves off
draining nodes, bounded by the node's max_parallel moves in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from controller.placement import (
    ClusterView,
    Constraint,
    NodeInfo,
    PlacedTask,
    Policy,
    Res,
    TaskRequest,
    place,
)
from lepton.errors import LeptonError, NotLeader
from lepton.v1 import commands_pb2, types_pb2

log = logging.getLogger("lepton.controller.scheduling")

TS = types_pb2.TaskState
# Tasks that hold a reservation on their node (a STOPPING process still runs).
HOLDING = frozenset(
    {TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING, TS.TASK_STATE_STOPPING}
)
BATCH_WINDOW = 0.02  # after a wake-up, wait this long so a burst of submits lands in one round
IDLE_PACE = 0.1
MAX_PACE = 0.5  # longest rest after a long round (see placement_loop)
# Raft entries of bounded size: a plan for a huge backlog is committed as
# several consecutive entries of at most this many assignments.
MAX_ASSIGNMENTS_PER_PLAN = 10_000


def res(r: types_pb2.Resources) -> Res:
    return Res(r.cpu_millis, r.memory_bytes, r.network_mbps, r.gpus)


def live_res(usage: types_pb2.NodeUsage | None) -> Res:
    if usage is None:
        return Res()
    return Res(usage.cpu_millis, usage.memory_used_bytes, usage.network_mbps, usage.gpus_busy)


def _job_type(job: types_pb2.Job | None) -> str:
    return "batch" if job is not None and job.spec.type == types_pb2.JOB_TYPE_BATCH else "service"


def _constraints(tmpl: types_pb2.TaskTemplate) -> tuple[Constraint, ...]:
    return tuple(Constraint(c.key, c.op, tuple(c.values)) for c in tmpl.constraints)


def build_view(
    nodes: Iterable[types_pb2.Node],
    tasks: Iterable[types_pb2.Task],
    jobs: Mapping[str, types_pb2.Job],
    live_usage: Mapping[str, types_pb2.NodeUsage],
) -> ClusterView:
    """The immutable snapshot place() and plan_rebalance() work on."""
    by_node: dict[str, list[types_pb2.Task]] = {}
    for t in tasks:
        if t.node_id and t.state in HOLDING:
            by_node.setdefault(t.node_id, []).append(t)
        if t.migrating_to:
            # The target copy of a migration already holds resources there.
            by_node.setdefault(t.migrating_to, []).append(t)
    infos = []
    constraints: dict[str, tuple[Constraint, ...]] = {}  # per job: its tasks share the template
    for n in nodes:
        placed = []
        reserved = Res()
        for t in by_node.get(n.id, ()):
            job = jobs.get(t.job_id)
            cons = constraints.get(t.job_id)
            if cons is None:
                cons = constraints[t.job_id] = _constraints(job.spec.template) if job else ()
            r = res(t.resources)
            reserved = reserved + r
            placed.append(
                PlacedTask(
                    task_id=t.id,
                    job_id=t.job_id,
                    priority=t.priority,
                    resources=r,
                    migratable=bool(job and job.spec.template.migratable) and not t.migrating_to,
                    job_type=_job_type(job),
                    # The rebalancer re-checks these when it picks a target for a move.
                    constraints=cons,
                    distinct_nodes=bool(job and job.spec.template.distinct_nodes),
                    gpu_model=job.spec.template.gpu_model if job else "",
                )
            )
        allocatable = res(n.capacity) - res(n.reserve)
        infos.append(
            NodeInfo(
                id=n.id,
                labels=dict(n.labels),
                allocatable=allocatable,
                reserved=reserved,
                live_used=live_res(live_usage.get(n.id)),
                ready=n.status == types_pb2.NODE_STATUS_READY,
                schedulable=not (n.cordoned or n.draining),
                gpu_models=tuple(g.model for g in n.gpus),
                tasks=tuple(placed),
            )
        )
    return ClusterView(nodes=tuple(infos))


def task_requests(
    pending: Iterable[types_pb2.Task], jobs: Mapping[str, types_pb2.Job], moved_off: Iterable[str] = ()
) -> list[TaskRequest]:
    """Placement requests; tasks in `moved_off` (stop-then-start migrations) avoid the node they left."""
    moved_off = set(moved_off)
    out = []
    # The tasks of a job share its template: its constraints are built once per job, not per task.
    constraints: dict[str, tuple[Constraint, ...]] = {}
    for t in pending:
        job = jobs.get(t.job_id)
        if job is None:
            continue
        tmpl = job.spec.template
        avoid = (t.previous_node_id,) if t.previous_node_id and t.id in moved_off else ()
        cons = constraints.get(t.job_id)
        if cons is None:
            cons = constraints[t.job_id] = _constraints(tmpl)
        out.append(
            TaskRequest(
                task_id=t.id,
                job_id=t.job_id,
                priority=job.spec.priority,
                order=job.submit_index * 100_000 + t.index,
                resources=res(t.resources if t.HasField("resources") else tmpl.resources),
                constraints=cons,
                distinct_nodes=tmpl.distinct_nodes,
                gpu_model=tmpl.gpu_model,
                avoid_nodes=avoid,
            )
        )
    return out


def live_usage_of(replica) -> dict[str, types_pb2.NodeUsage]:
    return {nid: lv.usage for nid, lv in replica.sessions.live.items()}


def jobs_by_id(state) -> dict[str, types_pb2.Job]:
    return {j.id: j for j in state.jobs(include_finished=True)}


def plan_body(
    plan,
    pending_by_id: Mapping[str, types_pb2.Task],
    tasks_by_id: Mapping[str, types_pb2.Task],
    limit: int = 0,
):
    """The CommitPlan for a Plan; each item names the attempt/state the planner saw (apply re-checks).

    With `limit`, only the first `limit` assignments (and the preemptions
    that make room for them) go in: a prefix of a plan is itself a valid plan,
    because each assignment only relies on the capacity left by earlier ones.
    """
    assignments = plan.assignments[:limit] if limit else plan.assignments
    return _body(assignments, plan.preemptions, pending_by_id, tasks_by_id)


def plan_bodies(
    plan,
    pending_by_id: Mapping[str, types_pb2.Task],
    tasks_by_id: Mapping[str, types_pb2.Task],
    limit: int,
) -> list:
    """The whole plan as consecutive CommitPlans of at most `limit` assignments each.

    Committed in order, they amount to the whole plan: each slice only relies
    on the capacity left by the ones before it, and apply re-checks every item
    against the state it meets. One place() call thus feeds a backlog of
    50,000 tasks, instead of planning everything again after every 10,000.
    """
    return [
        _body(plan.assignments[i : i + limit], plan.preemptions, pending_by_id, tasks_by_id)
        for i in range(0, max(len(plan.assignments), 1), limit)
    ]


def _body(assignments, preemptions, pending_by_id, tasks_by_id):
    body = commands_pb2.CommitPlan()
    for a in assignments:
        t = pending_by_id[a.task_id]
        body.assignments.add(
            task_id=a.task_id, node_id=a.node_id, expected_attempt=t.attempt, expected_state=t.state
        )
    included = {a.task_id for a in assignments}
    for p in preemptions:
        if p.for_task_id not in included:
            continue
        victim = tasks_by_id.get(p.victim_task_id)
        body.preemptions.add(
            task_id=p.victim_task_id,
            expected_attempt=victim.attempt if victim is not None else 0,
            node_id=p.node_id,
            preempted_by=p.for_task_id,
        )
    return body


async def _copy_sliced(slices) -> list:
    """Collects the copies a *_sliced() query makes, letting the event loop run between slices."""
    out: list = []
    for chunk in slices:
        out.extend(chunk)
        await asyncio.sleep(0)
    return out


async def placement_round(replica, term: int, policy: Policy = Policy.BINPACK) -> int:
    """Plans every pending task once and commits the plan (in slices of at most
    MAX_ASSIGNMENTS_PER_PLAN assignments, one Raft entry each). Returns tasks assigned.

    Only the copies of the records are taken on the event loop, in slices
    with a yield between them; building the view and planning (pure
    functions of those copies) run in a worker thread, because at 50,000
    tasks they take seconds, and the same loop must keep sending Raft
    heartbeats (a loop blocked longer than the election timeout costs the
    leadership) and taking agent reports meanwhile. The plan may be a little
    stale by the time it is proposed: apply re-checks every item, as it does
    for any plan.
    """
    state = replica.state
    pending = list(state.pending_tasks())
    if not pending:
        replica.sessions.unplaced = {}
        return 0
    jobs = jobs_by_id(state)
    # build_view only looks at tasks holding resources, and preemption victims are among them.
    all_tasks, nodes = (
        await _copy_sliced(state.holding_tasks_sliced()),
        await _copy_sliced(state.nodes_sliced()),
    )
    live = live_usage_of(replica)
    # A task moved stop-then-start by the rebalancer must not land back on the hot node it left.
    moved_off = [t.id for t in pending if state.preferred_node(t.id)]

    def plan_now():
        view = build_view(nodes, all_tasks, jobs, live)
        t0 = time.perf_counter()
        plan = place(view, task_requests(pending, jobs, moved_off), policy)
        seconds = time.perf_counter() - t0
        bodies = []
        if plan.assignments or plan.preemptions:
            bodies = plan_bodies(
                plan, {t.id: t for t in pending}, {t.id: t for t in all_tasks}, MAX_ASSIGNMENTS_PER_PLAN
            )
        return plan, seconds, bodies

    plan, plan_seconds, bodies = await asyncio.to_thread(plan_now)
    replica.sessions.unplaced = {u.task_id: u.reason for u in plan.unplaced}
    metrics = getattr(replica, "metrics", None)
    if not bodies:
        if metrics is not None:
            metrics.observe_placement(plan_seconds, 0, 0, [u.counts for u in plan.unplaced])
        return 0
    applied = preempted = skipped_n = 0
    skipped: list = []
    for body in bodies:
        result = await replica.propose(body, plan_term=term)
        applied += len(getattr(result, "applied", body.assignments))
        preempted += len(getattr(result, "preempted", body.preemptions))
        these = getattr(result, "skipped", ())
        skipped_n += len(these)
        skipped.extend(these[: 5 - len(skipped)])
    if metrics is not None:
        metrics.observe_placement(plan_seconds, applied, preempted, [u.counts for u in plan.unplaced])
    log.info(
        "placement round (term %d): %d assigned in %d entr%s, %d preempted, %d unplaced, %d skipped by apply",
        term,
        applied,
        len(bodies),
        "y" if len(bodies) == 1 else "ies",
        preempted,
        len(plan.unplaced),
        skipped_n,
        extra={"term": term},
    )
    for task_id, why in skipped:
        log.info("plan item for %s skipped: %s", task_id, why)
    return applied


DESIRED = frozenset({TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING})
# A task that left a draining node stop-then-start and is not running elsewhere yet counts as in flight.
MOVING = frozenset({TS.TASK_STATE_PENDING, TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING})


def drain_moves(
    nodes, tasks, jobs, now_ms: int, default_parallel: int, drain_info
) -> list[tuple[types_pb2.Task, str]]:
    """(task, draining node) pairs to start moving now, at most max_parallel in flight per node.

    Pure. Lowest priority moves first (the most important work is disturbed
    last); past the drain deadline everything left moves at once.
    """
    out = []
    for n in nodes:
        if not n.draining:
            continue
        deadline, max_parallel = drain_info(n.id)
        here = [t for t in tasks if t.node_id == n.id and t.state in DESIRED]
        in_flight = sum(1 for t in here if t.migrating_to)
        in_flight += sum(
            1 for t in tasks if t.previous_node_id == n.id and t.state in MOVING and t.node_id != n.id
        )
        budget = max(0, (max_parallel or default_parallel) - in_flight)
        if deadline and now_ms >= deadline:
            budget = len(here)
        movable = sorted((t for t in here if not t.migrating_to), key=lambda t: (t.priority, t.id))
        out.extend((t, n.id) for t in movable[:budget])
    return out


async def drain_round(replica, term: int, policy: Policy = Policy.BINPACK) -> int:
    """Starts the next moves off draining nodes; each is one MigrateTask fenced by `term`.

    A running service moves make-before-break to a target chosen by place();
    batch tasks and tasks not running yet stop here and go back to pending.
    A running service with no target anywhere waits (unless the deadline
    passed) rather than being stopped with nowhere to go.
    """
    state = replica.state
    # Asked after every commit: building every node view just to find no drain
    # cost most of the leader's time at 5,000 nodes.
    if not state.any_draining():
        return 0
    nodes = state.nodes()
    tasks = list(state.tasks())
    jobs = jobs_by_id(state)
    now = replica.clock.now_ms()
    moves = drain_moves(nodes, tasks, jobs, now, replica.cfg.drain_max_parallel, state.drain_info)
    if not moves:
        return 0
    view = build_view(nodes, tasks, jobs, live_usage_of(replica))
    services = [
        t for t, _ in moves if t.state == TS.TASK_STATE_RUNNING and _job_type(jobs.get(t.job_id)) == "service"
    ]
    service_ids = {t.id for t in services}
    plan = place(view, task_requests(services, jobs), policy, preemption=False)
    target = {a.task_id: a.node_id for a in plan.assignments}
    started = 0
    for t, node_id in moves:
        deadline, _ = state.drain_info(node_id)
        make_before_break = t.id in target
        if not make_before_break and t.id in service_ids and not (deadline and now >= deadline):
            continue
        body = commands_pb2.MigrateTask(
            task_id=t.id,
            expected_attempt=t.attempt,
            target_node_id=target.get(t.id, ""),
            reason=f"draining {node_id}",
            stop_then_start=not make_before_break,
        )
        try:
            await replica.propose(body, plan_term=term)
            started += 1
            if getattr(replica, "metrics", None) is not None:
                replica.metrics.observe_moves("drain")
        except NotLeader:
            raise
        except LeptonError as e:
            log.info("drain move of %s not started: %s", t.id, e)
    return started


async def placement_loop(replica, term: int) -> None:
    """Event-driven rounds with a periodic fallback; never more than one round at a time."""
    sessions = replica.sessions
    seen = -1
    interval = replica.cfg.placement_interval
    while True:
        if sessions.generation == seen and not sessions.capacity_changed.is_set():
            changed = asyncio.ensure_future(sessions.changed.wait())
            cap = asyncio.ensure_future(sessions.capacity_changed.wait())
            try:
                await asyncio.wait({changed, cap}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                cap.cancel()
            await asyncio.sleep(BATCH_WINDOW)
        sessions.capacity_changed.clear()
        seen = sessions.generation
        started = time.monotonic()
        placed = await placement_round(replica, term)
        moved = await drain_round(replica, term)
        took = time.monotonic() - started
        if took > BATCH_WINDOW:
            # A round costs time proportional to the whole cluster, not to what is
            # new; back to back they left little of the loop to the submits and
            # task events they were waiting for. Resting as long as the round took
            # (at most MAX_PACE) keeps placement at about half the loop under load
            # and lets each round take a bigger batch; small rounds are not delayed.
            await asyncio.sleep(min(took, MAX_PACE))
        if not placed and not moved:
            # Nothing could be done: tasks still pending wait for real news (a
            # commit, a node, a capacity change) without re-planning on every
            # applied entry faster than this.
            await asyncio.sleep(IDLE_PACE)
