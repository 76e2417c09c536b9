"""The bin-pack packing pass: extra effort to open fewer nodes for one priority level of a plan.

Placing tasks one by one in submission order onto the most-allocated node
(best fit) is what order and fairness demand while resources are short. But
when *every* task of a priority level fits, the order inside the level decides
nothing about who runs, only how many nodes get used. So for a level of at most
`PACK_EFFORT_TASKS` tasks the planner tries, without preemption, these
strategies and keeps the one that opens the fewest nodes (nodes that held no
task before the level), preferring the earlier strategy on ties:

1. best fit in submission order (what a plan without this pass does),
2. best fit in decreasing size (size = sum over dimensions of the request as a
   share of the largest allocatable),
3. node-centric fill (Panigrahy et al., "Heuristics for Vector Bin Packing",
   2011): the largest task left goes to its best node, then that node is filled
   with the task whose request best matches the node's free room (dot product
   of shares) until nothing more fits,

each followed by consolidation: the nodes the strategy opened, least loaded
first, are emptied when all their tasks fit on other non-empty nodes. If no
strategy places the whole level, the pass changes nothing and the level goes
through the ordinary path (submission order, with preemption).

Everything is counted, nothing timed, so the result is deterministic. The
effort is bounded per level (the fill strategy is O(tasks x distinct shapes)
and consolidation O(tasks x nodes)); bigger levels get best fit in submission
order only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller.placement.model import TaskRequest
from controller.placement.scoring import Scorer, Shape
from controller.placement.state import NDIM, PlanState

PACK_EFFORT_TASKS = 200
_CONSOLIDATION_ROUNDS = 3
_NEG_INF = float("-inf")


class _Trial:
    """Assignments made tentatively into the shared state, in order, so they can be undone exactly."""

    def __init__(self, state: PlanState, shapes: Sequence[Shape], level: Sequence[TaskRequest]):
        self.state = state
        self.shapes = shapes
        self.level = level
        self.node_of: dict[int, int] = {}  # level position -> node index
        self.score: dict[int, float] = {}  # level position -> the node's score when it was chosen
        self.steps: list[int] = []  # level positions in assignment order

    def put(self, k: int, i: int, score: float) -> None:
        self.state.assign(i, self.shapes[k].req, self.level[k].job_id)
        self.node_of[k] = i
        self.score[k] = score
        self.steps.append(k)

    def take(self, k: int) -> int:
        i = self.node_of.pop(k)
        del self.score[k]
        self.state.unassign(i, self.shapes[k].req, self.level[k].job_id)
        self.steps.remove(k)
        return i

    def undo(self) -> None:
        for k in reversed(list(self.steps)):
            self.take(k)


def pack_level(
    state: PlanState, scorer: Scorer, level: Sequence[TaskRequest]
) -> list[tuple[int, int, float]] | None:
    """Place the whole level with the best strategy: (level position, node index, score) per task.

    Returns None, with the state as it found it, when no strategy places every task.
    Otherwise the state holds the chosen arrangement.
    """
    shapes = [scorer.shape_for(t) for t in level]
    ref = _reference(state)
    sizes = [float(sum(s.req[d] / ref[d] for d in range(NDIM) if ref[d] > 0)) for s in shapes]
    empty_before = state.ntasks == 0
    bound = _opened_lower_bound(state, shapes, ref, empty_before)
    fifo = list(range(len(level)))
    # With one shape every order is the same order: only consolidation can help.
    strategies = ("fifo", "decreasing", "fill") if len({s.key for s in shapes}) > 1 else ("fifo",)
    best: tuple[int, list[tuple[int, int, float]]] | None = None
    for n, strategy in enumerate(strategies):
        trial = _Trial(state, shapes, level)
        if strategy == "fill":
            ok = _fill(trial, scorer, sizes, ref)
        else:
            order = fifo if strategy == "fifo" else sorted(fifo, key=lambda k: (-sizes[k], k))
            ok = _best_fit(trial, scorer, order)
        if ok:
            _consolidate(trial, scorer, empty_before, sizes)
            opened = int(np.count_nonzero(empty_before & (state.ntasks > 0)))
            if best is None or opened < best[0]:
                best = (opened, [(k, trial.node_of[k], trial.score[k]) for k in trial.steps])
                # Keep it in place when nothing later can do better (no undo, no replay).
                if opened <= bound or n == len(strategies) - 1:
                    return sorted(best[1])
        trial.undo()
    if best is None:
        return None
    for k, i, _ in best[1]:  # replay the winner (an earlier strategy) in its own order
        state.assign(i, shapes[k].req, level[k].job_id)
    return sorted(best[1])


def _opened_lower_bound(state: PlanState, shapes, ref, empty_before: np.ndarray) -> int:
    """No arrangement opens fewer nodes: demand beyond the room left in non-empty nodes, in largest nodes."""
    room = np.where(state.usable & ~empty_before, np.maximum(state.free, 0.0), 0.0).sum(axis=1)
    bound = 0
    for d in range(NDIM):
        demand = sum(s.req[d] for s in shapes)
        if demand > room[d] and ref[d] > 0:
            bound = max(bound, int(np.ceil((demand - room[d]) / ref[d] - 1e-9)))
    return bound


def _reference(state: PlanState) -> list[float]:
    # Shares are taken against the largest allocatable among usable nodes, per dimension.
    if state.n == 0 or not state.usable.any():
        return [0.0] * NDIM
    return [float(state.alloc[d, state.usable].max()) for d in range(NDIM)]


def _best_fit(trial: _Trial, scorer: Scorer, order: Sequence[int]) -> bool:
    for k in order:
        i, score = scorer.best(trial.shapes[k])
        if i < 0:
            return False
        trial.put(k, i, score)
    return True


def _fill(trial: _Trial, scorer: Scorer, sizes: Sequence[float], ref: Sequence[float]) -> bool:
    state = trial.state
    # Tasks of one shape are interchangeable here (same request, same filters), so each step
    # scores shapes, not tasks: a level of a few jobs costs O(tasks x shapes), not O(tasks²).
    groups: dict[tuple, list[int]] = {}
    for k, shape in enumerate(trial.shapes):
        groups.setdefault(shape.key, []).append(k)  # positions ascend: the earliest goes first
    while groups:
        key0 = min(groups, key=lambda g: (-sizes[groups[g][0]], groups[g][0]))
        k0 = groups[key0][0]
        i, score = scorer.best(trial.shapes[k0])
        if i < 0:
            return False
        _pop(groups, key0)
        trial.put(k0, i, score)
        while groups:
            free = state.free[:, i].tolist()
            best_g, best_v, best_score = None, _NEG_INF, _NEG_INF
            for g, ks in groups.items():
                shape = trial.shapes[ks[0]]
                score = scorer.row(shape, i)
                if score == _NEG_INF:
                    continue
                v = sum(shape.req[d] / ref[d] * free[d] / ref[d] for d in range(NDIM) if ref[d] > 0)
                if v > best_v or (v == best_v and ks[0] < groups[best_g][0]):
                    best_g, best_v, best_score = g, v, score
            if best_g is None:
                break
            trial.put(_pop(groups, best_g), i, best_score)
    return True


def _pop(groups: dict[tuple, list[int]], key: tuple) -> int:
    ks = groups[key]
    k = ks.pop(0)
    if not ks:
        del groups[key]
    return k


def _consolidate(trial: _Trial, scorer: Scorer, empty_before: np.ndarray, sizes: Sequence[float]) -> None:
    state = trial.state
    for _ in range(_CONSOLIDATION_ROUNDS):
        improved = False
        opened = [int(j) for j in np.flatnonzero(empty_before & (state.ntasks > 0))]
        load = {j: sum(sizes[k] for k, i in trial.node_of.items() if i == j) for j in opened}
        for j in sorted(opened, key=lambda j: (load[j], j)):
            movers = sorted((k for k, i in trial.node_of.items() if i == j), key=lambda k: (-sizes[k], k))
            if not movers:
                continue
            scores = {k: trial.score[k] for k in movers}
            for k in movers:
                trial.take(k)
            moved: list[int] = []
            for k in movers:
                vec = scorer.scores(trial.shapes[k]).copy()
                vec[j] = _NEG_INF
                vec[state.ntasks == 0] = _NEG_INF  # moving into an empty node saves nothing
                i = int(np.argmax(vec))
                if vec[i] == _NEG_INF:
                    break
                trial.put(k, i, float(vec[i]))
                moved.append(k)
            if len(moved) == len(movers):
                improved = True
                continue
            for k in reversed(moved):
                trial.take(k)
            for k in movers:
                trial.put(k, j, scores[k])
        if not improved:
            return
