"""`place()`: the pure placement planner (design brief § 5).

Takes an immutable `ClusterView` and the pending tasks, answers a `Plan`:
assignments, the preemptions they need, and the tasks that cannot be placed
with their reasons. No clock, randomness or I/O: the same input gives the same
plan, which is what lets the leader verify and commit it as one Raft entry.

Order: priority descending, then submission `order`, then task id. Each task
goes to the best-scoring feasible node (scoring.py); later tasks see the
reservations of earlier ones. A task that fits nowhere tries preemption
(preempt.py); failing that it is reported with aggregated filter reasons
(reasons.py). Under bin-pack, a small priority level that fits entirely may be
arranged differently to open fewer nodes (packing.py); that arrangement is only
used when it places every task of the level, so no task of it loses its place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller.placement import reasons as R
from controller.placement.model import (
    Assignment,
    ClusterView,
    Plan,
    Policy,
    Preemption,
    TaskRequest,
    Unplaced,
)
from controller.placement.packing import PACK_EFFORT_TASKS, pack_level
from controller.placement.preempt import find_preemption
from controller.placement.scoring import DEFAULT_WEIGHTS, Scorer, Shape
from controller.placement.state import NDIM, PlanState


def place(
    view: ClusterView,
    pending: Sequence[TaskRequest],
    policy: Policy = Policy.BINPACK,
    *,
    preemption: bool = True,
    packing: bool = True,
    weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS,
) -> Plan:
    """Plan placements for `pending` on `view`. Pure and deterministic.

    `preemption=False` never evicts; `packing=False` skips the bin-pack packing pass
    (packing.py), leaving plain best fit in submission order.
    """
    state = PlanState(view)
    scorer = Scorer(state, policy, weights)
    assignments: list[Assignment] = []
    preemptions: list[Preemption] = []
    unplaced: list[Unplaced] = []
    failed: dict[tuple, tuple[int, int]] = {}  # shape key -> (evictions, priority) when it last failed

    ordered = sorted(pending, key=lambda t: (-t.priority, t.order, t.task_id))
    for level in _levels(ordered):
        if packing and scorer.spread is False and 2 <= len(level) <= PACK_EFFORT_TASKS:
            packed = pack_level(state, scorer, level)
            if packed is not None:  # already applied to the state; reported in task order
                assignments.extend(
                    Assignment(level[k].task_id, state.ids[i], score) for k, i, score in packed
                )
                continue
        for task in level:
            _place_one(state, scorer, task, preemption, assignments, preemptions, unplaced, failed)

    return Plan(tuple(assignments), tuple(preemptions), tuple(unplaced))


def _levels(ordered: Sequence[TaskRequest]) -> list[list[TaskRequest]]:
    """Split the ordered tasks into runs of equal priority."""
    levels: list[list[TaskRequest]] = []
    for task in ordered:
        if levels and levels[-1][0].priority == task.priority:
            levels[-1].append(task)
        else:
            levels.append([task])
    return levels


def _place_one(
    state: PlanState,
    scorer: Scorer,
    task: TaskRequest,
    preemption: bool,
    assignments: list[Assignment],
    preemptions: list[Preemption],
    unplaced: list[Unplaced],
    failed: dict[tuple, tuple[int, int]],
) -> None:
    """The ordinary path: best node, else preemption, else a reason."""
    shape = scorer.shape_for(task)
    # Without evictions, free room only shrinks and later tasks are no more important, so a
    # shape that failed (preemption included) fails again: skip the search, keep the reason.
    memo = failed.get(shape.key)
    if memo is not None and memo[0] == state.evictions and task.priority <= memo[1]:
        i, score = -1, 0.0
    else:
        i, score = scorer.best(shape)
        if i < 0 and preemption:
            chosen = find_preemption(state, shape, task.priority)
            if chosen is not None:
                i, victims = chosen
                for t in sorted(victims, key=lambda t: state.t_ids[t]):
                    state.evict(t)
                    preemptions.append(Preemption(state.t_ids[t], state.ids[i], task.task_id))
                score = scorer.row(shape, i)
    if i < 0:
        failed[shape.key] = (state.evictions, task.priority)
        counts = unplaced_counts(state, task, shape)
        unplaced.append(Unplaced(task.task_id, R.format_reason(counts), counts))
        return
    state.assign(i, shape.req, task.job_id)
    assignments.append(Assignment(task.task_id, state.ids[i], score))


def unplaced_counts(state: PlanState, task: TaskRequest, shape: Shape) -> dict[str, int]:
    """Attribute every node to the first filter it fails (see reasons.py) and count."""
    counts: dict[str, int] = {}
    if state.n == 0:
        return counts

    def take(key: str, failing: np.ndarray) -> None:
        n = int(np.count_nonzero(failing))
        if n:
            counts[key] = counts.get(key, 0) + n

    left = state.ready.copy()
    take(R.DOWN, ~state.ready)
    take(R.CORDONED, left & ~state.schedulable)
    left &= state.schedulable
    if task.avoid_nodes:
        avoid = np.zeros(state.n, dtype=bool)
        for nid in task.avoid_nodes:
            j = state.index.get(nid)
            if j is not None:
                avoid[j] = True
        take(R.AVOIDED, left & avoid)
        left &= ~avoid
    for c in task.constraints:
        m = state.masks.constraint(c)
        take(R.constraint_key(c), left & ~m)
        left &= m
    if task.gpu_model:
        m = state.masks.gpu_model(task.gpu_model)
        take(R.gpu_model_key(task.gpu_model), left & ~m)
        left &= m
    if shape.job is not None:
        taken = np.zeros(state.n, dtype=bool)
        for j in state.job_nodes.get(shape.job, {}):
            taken[j] = True
        take(R.DISTINCT, left & taken)
        left &= ~taken
    for d in range(NDIM):
        take(R.INSUFFICIENT[d], left & (state.free[d] < shape.req[d]))
    return counts
