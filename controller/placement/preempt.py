"""Preemption: the cheapest set of strictly lower-priority tasks on one node whose eviction lets a task fit.

"Cheapest" is ordered: fewest evictions, then lowest total priority of the
victims, then the lowest node id, then the victims' task ids. Only tasks that
held reservations in the snapshot can be victims: tasks placed in this same plan
(which are all at least as important, because the plan goes in priority order)
and tasks already evicted by it are not candidates.

Which nodes could work at all is decided vectorised: a node qualifies when it
passes the task's non-resource filters and would fit the task if *every*
lower-priority task on it were evicted; per-node lower bounds on the cost
order the exact search so that it can stop early. Per qualifying node an exact
branch-and-bound search picks the victims; it visits at most `SEARCH_BUDGET`
search nodes per node (a count, not a clock, so the answer stays deterministic)
and keeps the best set found within it.
"""

from __future__ import annotations

import numpy as np

from controller.placement.scoring import Shape
from controller.placement.state import NDIM, PlanState

SEARCH_BUDGET = 20_000


def _per_node(state: PlanState, priority: int):
    """Per node, over its live tasks of priority < `priority`: total and largest request per
    dimension, and the lowest priority (int64 max where there is none).

    Computed once per priority and plan with segment reductions (tasks are stored grouped by
    node, ascending); afterwards only nodes that lost a task to an eviction are recomputed, so a
    burst of preemptions does not pay for every task in the cluster each time.
    """
    cached = state.preempt_agg.get(priority)
    if cached is None:
        n = state.n
        total = np.zeros((NDIM, n), dtype=np.float64)
        largest = np.zeros((NDIM, n), dtype=np.float64)
        lowest = np.full(n, _NONE, dtype=np.int64)
        cand = state.t_alive & (state.t_prio < priority)
        if cand.any():
            starts, owners = state.t_segments
            res = state.t_res * cand
            total[:, owners] = np.add.reduceat(res, starts, axis=1)
            largest[:, owners] = np.maximum.reduceat(res, starts, axis=1)
            lowest[owners] = np.minimum.reduceat(np.where(cand, state.t_prio, _NONE), starts)
        cached = state.preempt_agg[priority] = [len(state.evicted_nodes), total, largest, lowest]
    seen, total, largest, lowest = cached
    if seen != len(state.evicted_nodes):
        for i in set(state.evicted_nodes[seen:]):
            tasks = [t for t in state.tasks_on[i] if state.t_alive[t] and state.t_prio[t] < priority]
            for d in range(NDIM):
                vals = [float(state.t_res[d, t]) for t in tasks]
                total[d, i] = sum(vals)
                largest[d, i] = max(vals, default=0.0)
            lowest[i] = min((int(state.t_prio[t]) for t in tasks), default=_NONE)
        cached[0] = len(state.evicted_nodes)
    return total, largest, lowest


_NONE = np.iinfo(np.int64).max


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


def _bound_order(k_lb: np.ndarray, p_lb: np.ndarray, nodes: np.ndarray):
    """Yield (k bound, priority bound, node) in ascending order, lazily.

    The search usually stops after a node or two, so the first few come from O(n) minimum
    scans; only a search that goes on longer pays for a full sort of the rest.
    """
    left = np.ones(nodes.size, dtype=bool)
    for _ in range(min(_LAZY_STEPS, nodes.size)):
        k = np.where(left, k_lb, _NONE).min()
        m = left & (k_lb == k)
        p = np.where(m, p_lb, _NONE).min()
        pos = int(np.argmax(m & (p_lb == p)))  # first = lowest node index
        left[pos] = False
        yield int(k), int(p), int(nodes[pos])
    rest = np.flatnonzero(left)
    if rest.size:
        order = rest[np.lexsort((nodes[rest], p_lb[rest], k_lb[rest]))]
        yield from zip(k_lb[order].tolist(), p_lb[order].tolist(), nodes[order].tolist(), strict=True)


_LAZY_STEPS = 4


def _candidates(state: PlanState, i: int, priority: int) -> list:
    """Node i's live tasks below `priority` as (priority, task id, request, index), cheapest first."""
    return sorted(
        (
            (int(state.t_prio[t]), state.t_ids[t], tuple(state.t_res[:, t].tolist()), t)
            for t in state.tasks_on[i]
            if state.t_alive[t] and state.t_prio[t] < priority
        ),
        key=lambda c: (c[0], c[1]),
    )


def find_preemption(state: PlanState, shape: Shape, priority: int) -> tuple[int, list[int]] | None:
    """(node index, victim task indices) for the cheapest preemption, or None."""
    if state.n == 0 or state.t_prio.size == 0:
        return None
    total, largest, lowest = _per_node(state, priority)
    req = shape.req
    ok = shape.static & (lowest != _NONE)
    for d in range(NDIM):
        ok &= state.free[d] + total[d] >= req[d]
    if shape.job is not None:
        for i in state.job_nodes.get(shape.job, {}):
            ok[i] = False
    nodes = np.flatnonzero(ok)
    if nodes.size == 0:
        return None

    # Lower bounds per node: evictions >= the deficit over the largest victim, per dimension;
    # priority sum >= that count x the lowest victim priority. Visiting nodes in bound order
    # lets the search stop at the first node whose bound cannot beat the best set found (ties on
    # the bound come in node id order).
    k_lb = np.ones(nodes.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for d in range(NDIM):
            deficit = req[d] - state.free[d, nodes]
            np.maximum(k_lb, np.where(deficit > 0, np.ceil(deficit / largest[d, nodes]), 0.0), out=k_lb)
    k_lb = k_lb.astype(np.int64)
    p_lb = k_lb * lowest[nodes]
    # Nodes searched for this shape and priority before, and unchanged since, keep what that
    # search proved: their exact cost, or that they cost at least the bound it ran under. Without
    # this, a burst of preemptions re-searches every node it already used, quadratically.
    memo = state.preempt_memo.setdefault((shape.key, priority), {})
    for i in [i for i, entry in memo.items() if entry[0] != state.version[i]]:
        del memo[i]  # the node changed since: what was proved no longer holds
    valid = [(i, cost) for i, (_, cost, _) in memo.items() if ok[i]]
    if valid:
        pos = np.searchsorted(nodes, np.array([i for i, _ in valid], dtype=np.int64))
        km = np.array([c[0] for _, c in valid], dtype=np.int64)
        pm = np.array([c[1] for _, c in valid], dtype=np.int64)
        higher = (km > k_lb[pos]) | ((km == k_lb[pos]) & (pm > p_lb[pos]))
        k_lb[pos[higher]], p_lb[pos[higher]] = km[higher], pm[higher]
    keys = _bound_order(k_lb, p_lb, nodes)
    best = None  # (k, psum, node index, victims)
    bound = (10**9, float("inf"))  # anything beats it
    for kl, pl, i in keys:
        if best is not None and ((kl, pl) > bound or ((kl, pl) == bound and i > best[2])):
            break
        known = memo.get(i)
        if known is not None and known[0] == state.version[i] and known[2] is not None:
            found = (known[1][0], known[1][1], known[2])
        else:
            found = _search(
                _candidates(state, i, priority),
                [shape.req[d] - state.free[d, i] for d in range(NDIM)],
                # Priority sums are integers: a bound of p + 0.5 also accepts an equal
                # sum, which wins here only because this node's id is lower.
                (bound[0], bound[1] + 0.5) if best is not None and i < best[2] else bound,
            )
            if found is None:
                memo[i] = (state.version[i], bound, None)  # costs at least the bound
            else:
                memo[i] = (state.version[i], (found[0], found[1]), found[2])
        if found is None:
            continue
        k, psum, victims = found
        if (k, psum) > bound:
            continue
        # Strictly better, or equal on a lower node id (a tie can come later in bound order).
        if (
            best is None
            or (k, psum) < (best[0], best[1])
            or ((k, psum) == (best[0], best[1]) and i < best[2])
        ):
            best = (k, psum, i, victims)
            bound = (k, psum)
    if best is None:
        return None
    return best[2], [c[3] for c in best[3]]
