"""Cluster-wide bounds the ControlService enforces before it proposes anything.

Per-request bounds (name, count, resources, labels, command and argument
lengths, constraint sizes) live in controller/state/validate.py and are
re-checked by apply. These are the totals a single request cannot see: how
much a cluster holds at once. Above them a submit gets RESOURCE_EXHAUSTED,
so a runaway script fills neither the Raft log nor every replica's memory.
The figures are far above the benchmark's 500 jobs / 50,000 tasks.
"""

from __future__ import annotations

from lepton.errors import ResourceExhausted

MAX_ACTIVE_JOBS = 100_000
# Every task record ever created stays in the replicated state (and in every
# snapshot), finished or not, so this bounds records, not running tasks.
MAX_TASK_RECORDS = 2_000_000


def _sizes(state) -> tuple[int, int]:
    """(active jobs, task records) in O(1); ClusterState.counts() walks every task."""
    store = getattr(state, "_s", None)
    if store is not None and hasattr(store, "active_names") and hasattr(store, "tasks"):
        return len(store.active_names), len(store.tasks)
    counts = state.counts()
    return int(counts.get("jobs_total", 0)), sum(int(v) for v in counts.get("tasks_by_state", {}).values())


def check_submit(state, new_tasks: int) -> None:
    """Raises ResourceExhausted when a job of `new_tasks` tasks would not fit the bounds."""
    jobs, tasks = _sizes(state)
    if jobs + 1 > MAX_ACTIVE_JOBS:
        raise ResourceExhausted(f"the cluster already holds {jobs} active jobs (limit {MAX_ACTIVE_JOBS})")
    if tasks + new_tasks > MAX_TASK_RECORDS:
        raise ResourceExhausted(
            f"the cluster already holds {tasks} task records; {new_tasks} more exceed the limit "
            f"of {MAX_TASK_RECORDS}"
        )
