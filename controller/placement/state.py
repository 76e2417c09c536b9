"""The mutable working state of one plan: per-node resource arrays over the snapshot.

`place()` copies the immutable `ClusterView` into NumPy arrays once (nodes
sorted by id, so index order is the deterministic tie-break), then updates only
the touched column after each assignment or eviction. Every change is appended
to a change log; cached score vectors remember the log position they were
computed at and later recompute only the nodes changed since (see scoring.py).

Accounting (design brief § 5): a node's effective use in each dimension is
`max(reserved, live_used)`. A task placed in this plan adds its request to
both (it will reserve it now and is assumed to use up to it once running), so
the effective use grows by the request. An evicted task is assumed to have used
its request, so both shrink by it; live usage cannot be attributed per task
from the agent's node-level report, and this is the leader's best estimate.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from controller.placement.constraints import MaskCache
from controller.placement.model import ClusterView, NodeInfo

NDIM = 4


class PlanState:
    def __init__(self, view: ClusterView):
        nodes: list[NodeInfo] = sorted(view.nodes, key=lambda n: n.id)
        self.nodes = nodes
        self.ids = [n.id for n in nodes]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        n = len(nodes)
        self.n = n
        self.alloc = (
            np.array([x.allocatable.as_tuple() for x in nodes], dtype=np.float64).reshape(n, NDIM).T.copy()
        )
        reserved = np.array([x.reserved.as_tuple() for x in nodes], dtype=np.float64).reshape(n, NDIM).T
        live = np.array([x.live_used.as_tuple() for x in nodes], dtype=np.float64).reshape(n, NDIM).T
        self.used = np.maximum(reserved, live)
        self.free = self.alloc - self.used
        # 1/allocatable, 0 where a node has none of a dimension (it can never fit a request for it).
        with np.errstate(divide="ignore"):
            self.inv_alloc = np.where(self.alloc > 0, 1.0 / np.where(self.alloc > 0, self.alloc, 1.0), 0.0)
        self.ready = np.fromiter((x.ready for x in nodes), dtype=bool, count=n)
        self.schedulable = np.fromiter((x.schedulable for x in nodes), dtype=bool, count=n)
        self.usable = self.ready & self.schedulable
        self.masks = MaskCache([x.labels for x in nodes], [x.gpu_models for x in nodes])

        # Existing tasks, flattened: candidates for preemption and the base of anti-affinity.
        self.t_ids: list[str] = []
        self.t_job: list[str] = []
        node_of: list[int] = []
        prio: list[int] = []
        res: list[tuple[int, int, int, int]] = []
        # job id -> {node index: number of that job's tasks there}
        self.job_nodes: dict[str, dict[int, int]] = defaultdict(dict)
        for i, node in enumerate(nodes):
            for t in node.tasks:
                self.t_ids.append(t.task_id)
                self.t_job.append(t.job_id)
                node_of.append(i)
                prio.append(t.priority)
                res.append(t.resources.as_tuple())
                counts = self.job_nodes[t.job_id]
                counts[i] = counts.get(i, 0) + 1
        self.t_node = np.array(node_of, dtype=np.int64)
        self.t_prio = np.array(prio, dtype=np.int64)
        self.t_res = np.array(res, dtype=np.float64).reshape(len(res), NDIM).T.copy()
        self.t_alive = np.ones(len(res), dtype=bool)
        # Tasks are stored grouped by node in node order: segment starts and their nodes, for
        # per-node reductions over tasks (np.*.reduceat) in the preemption search.
        owners = np.flatnonzero(np.bincount(self.t_node, minlength=n)) if node_of else np.zeros(0, np.int64)
        self.t_segments = (np.searchsorted(self.t_node, owners), owners)
        self.tasks_on: list[list[int]] = [[] for _ in range(n)]
        for t, i in enumerate(node_of):
            self.tasks_on[i].append(t)

        # Tasks per node (a node with reservations but no listed tasks counts as holding one):
        # the packing pass counts the nodes a plan opens, i.e. that go from 0 to non-zero.
        self.ntasks = np.array(
            [max(len(x.tasks), 1 if any(x.reserved.as_tuple()) else 0) for x in nodes], dtype=np.int64
        )

        self.log: list[int] = []  # node index per change, in order
        self.evictions = 0  # bumps on every eviction (invalidates preemption caches)
        self.version = [0] * n  # per node, bumps on every change (validates per-node memos)
        # preempt.py's per-node results: (shape key, priority) -> {node: (version, cost, victims)}
        self.preempt_memo: dict[tuple, dict[int, tuple]] = {}
        # preempt.py's per-priority aggregates over victims, kept current through this log.
        self.evicted_nodes: list[int] = []
        self.preempt_agg: dict[int, list] = {}

    def assign(self, i: int, req: tuple[float, ...], job_id: str) -> None:
        for d in range(NDIM):
            r = req[d]
            if r:
                self.used[d, i] += r
                self.free[d, i] -= r
        counts = self.job_nodes[job_id]
        counts[i] = counts.get(i, 0) + 1
        self.ntasks[i] += 1
        self.version[i] += 1
        self.log.append(i)

    def unassign(self, i: int, req: tuple[float, ...], job_id: str) -> None:
        """Exactly undo `assign` (all quantities are integers below 2**53, so float sums are exact)."""
        for d in range(NDIM):
            r = req[d]
            if r:
                self.used[d, i] -= r
                self.free[d, i] += r
        counts = self.job_nodes[job_id]
        counts[i] -= 1
        if counts[i] == 0:
            del counts[i]
        self.ntasks[i] -= 1
        self.version[i] += 1
        self.log.append(i)

    def evict(self, t: int) -> None:
        i = int(self.t_node[t])
        self.t_alive[t] = False
        for d in range(NDIM):
            r = self.t_res[d, t]
            if r:
                self.used[d, i] -= r
                self.free[d, i] += r
        counts = self.job_nodes[self.t_job[t]]
        counts[i] -= 1
        if counts[i] == 0:
            del counts[i]
        self.ntasks[i] -= 1
        self.evictions += 1
        self.evicted_nodes.append(i)
        self.version[i] += 1
        self.log.append(i)
