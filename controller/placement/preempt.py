"""Preemption: the cheapest set of strictly lower-priority tasks on one node whose eviction lets a task fit.

"Cheapest" is ordered: fewest evictions, then lowest total priority of the
victims, then the lowest node id, then the victims' task ids. Only tasks that
held reservations in the snapshot can be victims: tasks placed in this same plan
(which are all at least as important, because the plan goes in priority order)
and tasks already evicted by it are not candidates.

Which nodes could work at all is decided vectorised: a node qualifies when it
passes the task's non-resource filters and would fit the task if *every*
lower-priority task on it were evicted. Per qualifying node an exact
branch-and-bound search picks the victims; it visits at most `SEARCH_BUDGET`
search nodes per node (a count, not a clock, so the answer stays deterministic)
and keeps the best set found within it.
"""

from __future__ import annotations

import numpy as np

from controller.placement.scoring import Shape
from controller.placement.state import NDIM, PlanState

SEARCH_BUDGET = 20_000


def _freeable(state: PlanState, priority: int) -> np.ndarray:
    """Per node and dimension, the resources held by live tasks of priority < `priority`."""
    out = np.zeros((NDIM, state.n), dtype=np.float64)
    if state.t_prio.size == 0:
        return out
    sel = state.t_alive & (state.t_prio < priority)
    if not sel.any():
        return out
    nodes = state.t_node[sel]
    for d in range(NDIM):
        out[d] = np.bincount(nodes, weights=state.t_res[d, sel], minlength=state.n)
    return out


def _search(cands, deficit, bound):
    """Exact min (count, priority sum) subset of `cands` covering `deficit`, better than `bound`.

    cands: list of (priority, task_id, res tuple, task index) sorted by priority, then task id.
    Iterative deepening on the count finds the fewest evictions first; within one count the
    depth-first search goes in ascending priority and prunes on the priority sum and on whether
    the remaining candidates could still cover the deficit at all.
    """
    n = len(cands)
    prios = [c[0] for c in cands]
    res = [c[2] for c in cands]
    # suffix[j][d]: what candidates j.. could free in dimension d.
    suffix = [[0.0] * NDIM for _ in range(n + 1)]
    for j in range(n - 1, -1, -1):
        suffix[j] = [suffix[j + 1][d] + res[j][d] for d in range(NDIM)]
    need_dims = [d for d in range(NDIM) if deficit[d] > 0]
    budget = [SEARCH_BUDGET]
    best_k, best_p = bound
    result = None

    for k in range(1, n + 1):
        if k > best_k:
            break
        found: list = [None, best_p if k == best_k else float("inf")]

        def dfs(start, left, chosen, psum, rem, k=k, found=found):
            if budget[0] <= 0:
                return
            budget[0] -= 1
            if left == 0:
                if all(rem[d] <= 0 for d in need_dims) and psum < found[1]:
                    found[0] = list(chosen)
                    found[1] = psum
                return
            for j in range(start, n - left + 1):
                # Priorities ascend, so prios[j..j+left) is the cheapest way to fill the slots left.
                if psum + sum(prios[j : j + left]) >= found[1]:
                    return
                if any(rem[d] > suffix[j][d] for d in need_dims):
                    return
                r = res[j]
                chosen.append(j)
                dfs(j + 1, left - 1, chosen, psum + prios[j], [rem[d] - r[d] for d in range(NDIM)])
                chosen.pop()

        dfs(0, k, [], 0, list(deficit))
        if found[0] is not None:
            result = (k, found[1], [cands[j] for j in found[0]])
            break
    return result


def find_preemption(state: PlanState, shape: Shape, priority: int) -> tuple[int, list[int]] | None:
    """(node index, victim task indices) for the cheapest preemption, or None."""
    if state.n == 0 or state.t_prio.size == 0:
        return None
    free_if_all = state.free + _freeable(state, priority)
    ok = shape.static.copy()
    for d in range(NDIM):
        ok &= free_if_all[d] >= shape.req[d]
    if shape.job is not None:
        for i in state.job_nodes.get(shape.job, {}):
            ok[i] = False
    candidates_nodes = np.flatnonzero(ok)
    best = None  # (k, psum, node index, victims)
    bound = (10**9, float("inf"))  # anything beats it
    for i in candidates_nodes.tolist():
        free = state.free[:, i].tolist()
        deficit = [shape.req[d] - free[d] for d in range(NDIM)]
        cands = sorted(
            (
                (int(state.t_prio[t]), state.t_ids[t], tuple(state.t_res[:, t].tolist()), t)
                for t in state.tasks_on[i]
                if state.t_alive[t] and state.t_prio[t] < priority
            ),
            key=lambda c: (c[0], c[1]),
        )
        found = _search(cands, deficit, bound)
        if found is None:
            continue
        k, psum, victims = found
        # Strictly better only: an equal (k, psum) on a later node loses to the lower node id.
        if best is None or (k, psum) < (best[0], best[1]):
            best = (k, psum, i, victims)
            bound = (k, psum)
    if best is None:
        return None
    return best[2], [c[3] for c in best[3]]
