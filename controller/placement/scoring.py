"""Feasibility and scoring of one task shape over all nodes, vectorised and cached.

A "shape" is what decides where a task may go and how nodes rank for it: its
request, its static filters (constraints, GPU model, avoided nodes) and, for
`distinct_nodes` tasks, its job. Tasks of one job share a shape, and so do
different jobs of one size, so the planner computes a shape's score vector over
all nodes once with NumPy and afterwards only rescores the nodes that changed
since (usually the one node the previous task went to). That keeps a placement
over 5,000 nodes at a few microseconds per task.

Score: the weighted mean, over the requested dimensions, of the fraction of
allocatable in use after placement. Bin-pack maximises it (most-allocated,
Kubernetes' MostAllocated); spread maximises its complement (least-allocated).
Infeasible nodes score -inf. `np.argmax` returns the first maximum and nodes
are sorted by id, so ties go to the lowest node id.
"""

from __future__ import annotations

import numpy as np

from controller.placement.model import Policy, TaskRequest
from controller.placement.state import NDIM, PlanState

# Weight per dimension (cpu, memory, network, gpus) in the score.
DEFAULT_WEIGHTS: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

_NEG_INF = float("-inf")
# Cached score vectors kept per plan; the oldest is dropped beyond this (bounded memory at 10,000 nodes).
_MAX_CACHED_SHAPES = 256


class Shape:
    __slots__ = ("req", "dims", "static_key", "static", "job", "key")

    def __init__(self, req, dims, static_key, static, job):
        self.req: tuple[float, float, float, float] = req
        self.dims: tuple[int, ...] = dims  # requested dimensions (request > 0): the ones scored
        self.static_key = static_key
        self.static: np.ndarray = static  # node passes ready/schedulable/constraints/GPU model/avoid
        self.job: str | None = job  # set for distinct_nodes tasks
        self.key = (req, static_key, job)


class Scorer:
    def __init__(self, state: PlanState, policy: Policy, weights=DEFAULT_WEIGHTS):
        self.s = state
        self.spread = Policy(policy) is Policy.SPREAD
        self.weights = tuple(float(w) for w in weights)
        self._static: dict[tuple, np.ndarray] = {}
        self._shapes: dict[tuple, Shape] = {}
        self._scores: dict[tuple, list] = {}  # shape key -> [score vector, log position]
        # Recomputing more rows than this one by one costs more than one vectorised pass.
        self._row_limit = max(32, state.n // 64)

    # -- shapes ---------------------------------------------------------------------------------
    def shape_for(self, task: TaskRequest) -> Shape:
        # Tasks of one job repeat the same fields: build each distinct shape once per plan.
        ck = (
            task.resources,
            task.constraints,
            task.gpu_model,
            task.avoid_nodes,
            task.job_id if task.distinct_nodes else None,
        )
        shape = self._shapes.get(ck)
        if shape is None:
            shape = self._shapes[ck] = self._new_shape(task)
        return shape

    def _new_shape(self, task: TaskRequest) -> Shape:
        req = tuple(float(x) for x in task.resources.as_tuple())
        static_key = (task.constraints, task.gpu_model, task.avoid_nodes)
        static = self._static.get(static_key)
        if static is None:
            static = self.static_mask(task)
            self._static[static_key] = static
        dims = tuple(d for d in range(NDIM) if req[d] > 0)
        return Shape(req, dims, static_key, static, task.job_id if task.distinct_nodes else None)

    def static_mask(self, task: TaskRequest) -> np.ndarray:
        s = self.s
        mask = s.usable.copy()
        for c in task.constraints:
            mask &= s.masks.constraint(c)
        if task.gpu_model:
            mask &= s.masks.gpu_model(task.gpu_model)
        for nid in task.avoid_nodes:
            i = s.index.get(nid)
            if i is not None:
                mask[i] = False
        return mask

    # -- scores ---------------------------------------------------------------------------------
    def full(self, shape: Shape) -> np.ndarray:
        s = self.s
        req = shape.req
        fit = shape.static.copy()
        for d in range(NDIM):
            # Every dimension, requested or not: a node already over its allocatable in some
            # dimension (live usage beyond it) takes nothing more (brief § 5's rule, literally).
            fit &= s.free[d] >= req[d]
        total = np.zeros(s.n, dtype=np.float64)
        wsum = 0.0
        for d in shape.dims:
            w = self.weights[d]
            total += ((s.used[d] + req[d]) * s.inv_alloc[d]) * w
            wsum += w
        if wsum:
            total *= 1.0 / wsum
        if self.spread:
            total = 1.0 - total
        scores = np.where(fit, total, _NEG_INF)
        if shape.job is not None:
            taken = s.job_nodes.get(shape.job)
            if taken:
                scores[np.fromiter(taken.keys(), dtype=np.int64, count=len(taken))] = _NEG_INF
        return scores

    def row(self, shape: Shape, i: int) -> float:
        """The score of one node; the same arithmetic as `full`, so both paths agree bit for bit."""
        s = self.s
        if not shape.static[i]:
            return _NEG_INF
        if shape.job is not None and i in s.job_nodes.get(shape.job, ()):
            return _NEG_INF
        req = shape.req
        free = s.free[:, i].tolist()
        for d in range(NDIM):
            if free[d] < req[d]:
                return _NEG_INF
        used = s.used[:, i].tolist()
        inv = s.inv_alloc[:, i].tolist()
        total = 0.0
        wsum = 0.0
        for d in shape.dims:
            w = self.weights[d]
            total += ((used[d] + req[d]) * inv[d]) * w
            wsum += w
        if wsum:
            total *= 1.0 / wsum
        return 1.0 - total if self.spread else total

    def scores(self, shape: Shape) -> np.ndarray:
        """The shape's current score vector (cached; stale rows are refreshed)."""
        log = self.s.log
        entry = self._scores.get(shape.key)
        if entry is None:
            vec = self.full(shape)
            if len(self._scores) >= _MAX_CACHED_SHAPES:
                del self._scores[next(iter(self._scores))]
            self._scores[shape.key] = [vec, len(log)]
            return vec
        vec, seen = entry
        if seen != len(log):
            changed = log[seen:]
            if len(changed) > self._row_limit:
                vec = self.full(shape)
                entry[0] = vec
            else:
                for i in set(changed):
                    vec[i] = self.row(shape, i)
            entry[1] = len(log)
        return vec

    def best(self, shape: Shape) -> tuple[int, float]:
        """(node index, score) of the best feasible node, or (-1, -inf)."""
        if self.s.n == 0:
            return -1, _NEG_INF
        vec = self.scores(shape)
        i = int(np.argmax(vec))
        score = float(vec[i])
        if score == _NEG_INF:
            return -1, score
        return i, score
