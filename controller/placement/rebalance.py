"""`plan_rebalance()`: the pure rebalancing planner (design brief § 5, "dynamic adjustment").

Input: the snapshot, each node's recent utilisation samples (0..1, the max over
cpu/memory/network of live_used/allocatable, newest last), the time, when each
task last moved and how many migrations are in flight per node. Output: a few
moves off hot nodes, each with a human reason, plus notes on what was skipped.
No clock, randomness or I/O: `now_ms` is an input.

Rules (docs/placement.md has the worked reasoning):

* Hot, sustained: a node's last `sustained_samples` samples are all above
  `high_watermark`.
* Hot, imbalance: some ready node's latest sample is below `low_watermark` and
  this node's last `sustained_samples` samples all sit more than
  `imbalance_threshold` above that minimum. Both kinds need the whole window,
  so a momentary spike never moves anything.
* A hot node sheds migratable tasks, lowest priority first (then the larger
  request, then task id), that are out of their cooldown, until its predicted
  utilisation is below `high_watermark - hysteresis` (sustained) or no longer
  `imbalance_threshold` above the minimum (imbalance), or the limits are hit.
* The target is chosen with the placement machinery (same feasibility:
  reservations and live usage, ready/schedulable, constraints, GPU model,
  distinct nodes; the source is avoided) and scored with `config.policy`
  (least-allocated by default: moving load to the fullest node that fits would
  create the next hot node).
* No flapping: a target's predicted utilisation after the move must stay below
  `high_watermark - hysteresis` and its own latest sample too, so it never
  becomes hot and sheds the task back; for an imbalance move the target must
  also end at least `hysteresis` below the source's predicted utilisation after
  the move, so the reverse move could never pass the same rule. Per-task
  cooldown stops a task from moving again soon.
* Limits: `max_moves_per_round`; in flight per node (as source or target,
  counting `inflight` plus this round) `max_inflight_per_node`; in flight in
  the cluster `max_inflight_cluster`.

Predicted utilisation uses the planner's effective usage per dimension,
`max(reserved, live_used)`, and assumes a task uses its request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.placement.model import DIMENSIONS, ClusterView, Policy, TaskRequest
from controller.placement.scoring import Scorer
from controller.placement.state import PlanState

MAKE_BEFORE_BREAK = "make_before_break"  # services: start on the target, then stop the source
STOP_THEN_START = "stop_then_start"  # batch: stop, then start on the target

_UTIL_DIMS = (0, 1, 2)  # cpu, memory, network: the dimensions utilisation samples cover
_NOTE_NODES = 10  # node names listed in one note before "and N more"


@dataclass(frozen=True)
class RebalanceConfig:
    high_watermark: float = 0.85
    low_watermark: float = 0.5
    imbalance_threshold: float = 0.3
    sustained_samples: int = 5
    max_moves_per_round: int = 2
    max_inflight_per_node: int = 1
    max_inflight_cluster: int = 4
    task_cooldown_ms: int = 300_000
    hysteresis: float = 0.05
    policy: Policy = Policy.SPREAD


@dataclass(frozen=True)
class Move:
    task_id: str
    job_id: str
    from_node: str
    to_node: str
    reason: str
    kind: str  # MAKE_BEFORE_BREAK | STOP_THEN_START
    score: float = 0.0  # the target's placement score for the task (config.policy)


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    notes: tuple[str, ...]


def _pct(x: float) -> str:
    return f"{round(x * 100)}%"


def plan_rebalance(
    view: ClusterView,
    history: Mapping[str, Sequence[float]],
    now_ms: int,
    last_moved_ms: Mapping[str, int],
    inflight: Mapping[str, int],
    config: RebalanceConfig = RebalanceConfig(),
) -> RebalancePlan:
    """Plan at most `max_moves_per_round` migrations off hot nodes. Pure and deterministic."""
    cfg = config
    window = max(1, cfg.sustained_samples)
    state = PlanState(view)
    scorer = Scorer(state, cfg.policy)
    notes: list[str] = []
    moves: list[Move] = []
    if state.n == 0:
        return RebalancePlan((), ("no nodes",))

    latest = np.array([_latest(history.get(nid)) for nid in state.ids], dtype=np.float64)
    ready_idx = [i for i in range(state.n) if state.ready[i]]
    if not ready_idx:
        return RebalancePlan((), ("no ready nodes",))

    # The coolest ready node anchors the imbalance rule.
    cool = min(ready_idx, key=lambda i: (latest[i], state.ids[i]))
    imbalance_on = latest[cool] < cfg.low_watermark

    hot: list[tuple[int, str]] = []  # (node index, kind)
    for i in ready_idx:
        window_samples = list(history.get(state.ids[i], ()))[-window:]
        if len(window_samples) < window:
            continue
        if all(s > cfg.high_watermark for s in window_samples):
            hot.append((i, "sustained"))
        elif (
            imbalance_on
            and i != cool
            and all(s - latest[cool] > cfg.imbalance_threshold for s in window_samples)
        ):
            hot.append((i, "imbalance"))
    hot.sort(key=lambda h: (-latest[h[0]], state.ids[h[0]]))
    if not hot:
        notes.append(
            f"no hot node among {len(ready_idx)} ready nodes (high {_pct(cfg.high_watermark)} for "
            f"{window} samples; imbalance > {_pct(cfg.imbalance_threshold)} with a node below {_pct(cfg.low_watermark)})"
        )
        return RebalancePlan((), tuple(notes))
    hot_set = {i for i, _ in hot}
    shown = ", ".join(f"{state.ids[i]} ({kind}, {_pct(latest[i])})" for i, kind in hot[:_NOTE_NODES])
    more = f" and {len(hot) - _NOTE_NODES} more" if len(hot) > _NOTE_NODES else ""
    notes.append(f"hot: {shown}{more}")

    busy = {nid: n for nid, n in inflight.items() if n > 0}
    cluster_inflight = sum(busy.values())
    target_limit = cfg.high_watermark - cfg.hysteresis

    for n, (src, kind) in enumerate(hot):
        src_id = state.ids[src]
        # Round-wide limits end the round: one note for every hot node left (thousands could be hot).
        if len(moves) >= cfg.max_moves_per_round:
            notes.append(
                f"{_left(state, hot[n:])}: skipped, {cfg.max_moves_per_round} moves per round reached"
            )
            break
        if cluster_inflight >= cfg.max_inflight_cluster:
            notes.append(
                f"{_left(state, hot[n:])}: skipped, cluster in-flight limit {cfg.max_inflight_cluster} reached"
            )
            break
        if busy.get(src_id, 0) >= cfg.max_inflight_per_node:
            notes.append(
                f"{src_id}: skipped, {busy[src_id]} migration(s) in flight (limit {cfg.max_inflight_per_node})"
            )
            continue
        dim = _dominant_dim(state, src)
        if kind == "sustained":
            why = f"node {src_id} {DIMENSIONS[dim]} {_pct(latest[src])} > {_pct(cfg.high_watermark)} for {window} samples"
            goal = target_limit  # shed until predicted below high - hysteresis
        else:
            why = (
                f"node {src_id} {DIMENSIONS[dim]} {_pct(latest[src])} is more than {_pct(cfg.imbalance_threshold)} "
                f"above {state.ids[cool]} at {_pct(latest[cool])} for {window} samples"
            )
            goal = latest[cool] + cfg.imbalance_threshold

        candidates, cooling = _candidates(state, src, now_ms, last_moved_ms, cfg.task_cooldown_ms)
        if cooling:
            notes.append(f"{src_id}: {cooling} task(s) in cooldown")
        if not candidates:
            notes.append(f"{src_id}: no migratable task out of cooldown")
            continue
        predicted = max(latest[src], _util(state, src))
        moved_here = 0
        for t in candidates:
            if predicted < goal:
                break
            if len(moves) >= cfg.max_moves_per_round or cluster_inflight >= cfg.max_inflight_cluster:
                break
            if busy.get(src_id, 0) >= cfg.max_inflight_per_node:
                break
            task = view_task(state, t, src_id)
            share = _share(state, t, src)
            src_after = max(0.0, predicted - share)
            shape = scorer.shape_for(task)
            scores = scorer.scores(shape).copy()
            after = _after(state, shape.req)
            ok = (scores > -np.inf) & (after < target_limit) & (latest < target_limit)
            if kind == "imbalance":
                ok &= after + cfg.hysteresis <= src_after
            for i in hot_set:
                ok[i] = False
            for nid, n in busy.items():
                j = state.index.get(nid)
                if j is not None and n >= cfg.max_inflight_per_node:
                    ok[j] = False
            if not ok.any():
                notes.append(
                    f"{src_id}: no target for {state.t_ids[t]} that stays below {_pct(target_limit)}"
                )
                continue
            scores[~ok] = -np.inf
            tgt = int(np.argmax(scores))
            tgt_id = state.ids[tgt]
            tgt_before = max(latest[tgt], _util(state, tgt))
            reason = (
                f"{why}; {tgt_id} at {_pct(tgt_before)} -> {_pct(after[tgt])}; "
                f"{state.t_ids[t]} (priority {int(state.t_prio[t])}) lowest-priority migratable task"
            )
            job_type = state.nodes[src].tasks[_local_index(state, src, t)].job_type
            moves.append(
                Move(
                    state.t_ids[t],
                    state.t_job[t],
                    src_id,
                    tgt_id,
                    reason,
                    STOP_THEN_START if job_type == "batch" else MAKE_BEFORE_BREAK,
                    float(scores[tgt]),
                )
            )
            # Later decisions in this round see the move: the target holds it, the source is relieved.
            state.assign(tgt, shape.req, state.t_job[t])
            state.evict(t)
            predicted = src_after
            cluster_inflight += 1
            busy[src_id] = busy.get(src_id, 0) + 1
            busy[tgt_id] = busy.get(tgt_id, 0) + 1
            moved_here += 1
        if moved_here and predicted >= goal:
            notes.append(
                f"{src_id}: predicted {_pct(predicted)} after {moved_here} move(s), still above {_pct(goal)}"
            )
    return RebalancePlan(tuple(moves), tuple(notes))


def _left(state: PlanState, hot: Sequence[tuple[int, str]]) -> str:
    names = ", ".join(state.ids[i] for i, _ in hot[:_NOTE_NODES])
    return names + (f" and {len(hot) - _NOTE_NODES} more" if len(hot) > _NOTE_NODES else "")


def _latest(samples: Sequence[float] | None) -> float:
    return float(samples[-1]) if samples else 0.0


def _util(state: PlanState, i: int) -> float:
    return max(float(state.used[d, i] * state.inv_alloc[d, i]) for d in _UTIL_DIMS)


def _dominant_dim(state: PlanState, i: int) -> int:
    return max(_UTIL_DIMS, key=lambda d: (float(state.used[d, i] * state.inv_alloc[d, i]), -d))


def _share(state: PlanState, t: int, i: int) -> float:
    """How much of node i's utilisation task t accounts for (its largest per-dimension share)."""
    return max(float(state.t_res[d, t] * state.inv_alloc[d, i]) for d in _UTIL_DIMS)


def _after(state: PlanState, req: tuple[float, ...]) -> np.ndarray:
    """Predicted utilisation of every node if it also ran a task of this request."""
    return np.max(np.stack([(state.used[d] + req[d]) * state.inv_alloc[d] for d in _UTIL_DIMS]), axis=0)


def _local_index(state: PlanState, i: int, t: int) -> int:
    return state.tasks_on[i].index(t)


def _candidates(
    state: PlanState, i: int, now_ms: int, last_moved_ms: Mapping[str, int], cooldown_ms: int
) -> tuple[list[int], int]:
    """Migratable tasks on node i out of cooldown, lowest priority first, then larger share, then id."""
    node = state.nodes[i]
    out, cooling = [], 0
    for local, t in enumerate(state.tasks_on[i]):
        pt = node.tasks[local]
        if not pt.migratable or not state.t_alive[t]:
            continue
        moved = last_moved_ms.get(pt.task_id)
        if moved is not None and now_ms - moved < cooldown_ms:
            cooling += 1
            continue
        out.append(t)
    out.sort(key=lambda t: (int(state.t_prio[t]), -_share(state, t, i), state.t_ids[t]))
    return out, cooling


def view_task(state: PlanState, t: int, src_id: str) -> TaskRequest:
    """A placement request for existing task t, avoiding the node it leaves."""
    i = int(state.t_node[t])
    pt = state.nodes[i].tasks[_local_index(state, i, t)]
    return TaskRequest(
        task_id=pt.task_id,
        job_id=pt.job_id,
        priority=pt.priority,
        order=0,
        resources=pt.resources,
        constraints=pt.constraints,
        distinct_nodes=pt.distinct_nodes,
        gpu_model=pt.gpu_model,
        avoid_nodes=(src_id,),
    )
