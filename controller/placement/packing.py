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
effort is bounded per level (strategies are O(n²) in the level's size); bigger
levels get best fit in submission order only.
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
        self.steps: list[int] = []  # level positions in assignment order

    def put(self, k: int, i: int) -> None:
        self.state.assign(i, self.shapes[k].req, self.level[k].job_id)
        self.node_of[k] = i
        self.steps.append(k)

    def take(self, k: int) -> int:
        i = self.node_of.pop(k)
        self.state.unassign(i, self.shapes[k].req, self.level[k].job_id)
        self.steps.remove(k)
        return i

    def undo(self) -> None:
        for k in reversed(list(self.steps)):
            self.take(k)


def pack_level(
    state: PlanState, scorer: Scorer, level: Sequence[TaskRequest]
) -> list[tuple[int, int]] | None:
    """The best strategy's (level position, node index) pairs in placement order, or None.

    Leaves the state as it found it; the caller replays the answer.
    """
    shapes = [scorer.shape_for(t) for t in level]
    ref = _reference(state)
    sizes = [float(sum(s.req[d] / ref[d] for d in range(NDIM) if ref[d] > 0)) for s in shapes]
    empty_before = state.ntasks == 0
    best: tuple[int, list[tuple[int, int]]] | None = None
    fifo = list(range(len(level)))
    decreasing = sorted(fifo, key=lambda k: (-sizes[k], k))
    for strategy in ("fifo", "decreasing", "fill"):
        trial = _Trial(state, shapes, level)
        if strategy == "fill":
            ok = _fill(trial, scorer, sizes, ref)
        else:
            ok = _best_fit(trial, scorer, fifo if strategy == "fifo" else decreasing)
        if ok:
            _consolidate(trial, scorer, empty_before, sizes)
            opened = int(np.count_nonzero(empty_before & (state.ntasks > 0)))
            if best is None or opened < best[0]:
                best = (opened, [(k, trial.node_of[k]) for k in trial.steps])
        trial.undo()
    return None if best is None else best[1]


def _reference(state: PlanState) -> list[float]:
    # Shares are taken against the largest allocatable among usable nodes, per dimension.
    if state.n == 0 or not state.usable.any():
        return [0.0] * NDIM
    return [float(state.alloc[d, state.usable].max()) for d in range(NDIM)]


def _best_fit(trial: _Trial, scorer: Scorer, order: Sequence[int]) -> bool:
    for k in order:
        i, _ = scorer.best(trial.shapes[k])
        if i < 0:
            return False
        trial.put(k, i)
    return True


def _fill(trial: _Trial, scorer: Scorer, sizes: Sequence[float], ref: Sequence[float]) -> bool:
    state = trial.state
    left = list(range(len(trial.level)))
    while left:
        k0 = min(left, key=lambda k: (-sizes[k], k))
        i, _ = scorer.best(trial.shapes[k0])
        if i < 0:
            return False
        trial.put(k0, i)
        left.remove(k0)
        while left:
            free = state.free[:, i].tolist()
            best_k, best_v = -1, _NEG_INF
            for k in left:
                if scorer.row(trial.shapes[k], i) == _NEG_INF:
                    continue
                req = trial.shapes[k].req
                v = sum(req[d] / ref[d] * free[d] / ref[d] for d in range(NDIM) if ref[d] > 0)
                if v > best_v:
                    best_k, best_v = k, v
            if best_k < 0:
                break
            trial.put(best_k, i)
            left.remove(best_k)
    return True


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
                trial.put(k, i)
                moved.append(k)
            if len(moved) == len(movers):
                improved = True
                continue
            for k in reversed(moved):
                trial.take(k)
            for k in movers:
                trial.put(k, j)
        if not improved:
            return
