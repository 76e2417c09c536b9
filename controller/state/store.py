"""The data of ClusterState and the indexes derived from it.

Entities are stored as the protobuf records of commands.proto (NodeRecord,
TaskRecord) and types.proto (Job), so a snapshot is a plain copy and the
canonical serialisation for digest() comes for free. Dicts keep insertion
order, which is the same on every replica (it follows the command log) and
is preserved by snapshot/restore. Derived indexes (active job names, tasks
holding resources on each node) are rebuilt on restore and never iterated
unsorted where the order could leak into state or events: Python's string
hashing differs between processes.

Task changes go through `begin_change()` / `end_change()` so that the
per-node resource index and desired-set versions stay correct: a node's
desired version moves to the entry's Raft index exactly when the set of
(task, attempt) pairs it should run changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lepton.v1 import commands_pb2, types_pb2

from .events import EventLog


def _plain_enum(wrapper, name: str) -> type:
    """The enum's values as plain class attributes.

    Attribute access on protobuf's EnumTypeWrapper goes through __getattr__
    and dominated the profile of a 50,000-task CommitPlan; ints do not.
    """
    attrs = {k: v for k, v in wrapper.items()}
    attrs["Name"] = staticmethod(wrapper.Name)
    return type(name, (), attrs)


TS = _plain_enum(types_pb2.TaskState, "TS")
JS = _plain_enum(types_pb2.JobState, "JS")

# Tasks that hold resources on their node (a STOPPING process still runs).
ACTIVE = frozenset(
    {TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING, TS.TASK_STATE_STOPPING}
)
# Tasks the node's agent should run (its desired set).
DESIRED = frozenset({TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING})
TERMINAL = frozenset({TS.TASK_STATE_SUCCEEDED, TS.TASK_STATE_FAILED, TS.TASK_STATE_STOPPED})
JOB_FINISHED = frozenset({JS.JOB_STATE_COMPLETE, JS.JOB_STATE_FAILED, JS.JOB_STATE_CANCELLED})


@dataclass(slots=True)
class ApplyContext:
    """What one apply call knows: the entry's coordinates and the proposer's stamps."""

    index: int
    term: int
    time_ms: int
    plan_term: int = 0
    request_id: str = ""
    # Nodes whose task set (resources held) changed: checked for drain completion.
    nodes_changed: set[str] = field(default_factory=set)
    # Jobs whose tasks changed: their derived state is recomputed after the command.
    jobs_changed: set[str] = field(default_factory=set)


def task_state_name(state: int) -> str:
    return TS.Name(state).removeprefix("TASK_STATE_").lower()


def job_state_name(state: int) -> str:
    return JS.Name(state).removeprefix("JOB_STATE_").lower()


class Store:
    def __init__(self) -> None:
        self.applied_index = 0
        self.applied_term = 0
        self.members: dict[str, commands_pb2.MemberRecord] = {}
        self.leader_id = ""
        self.leader_api_address = ""
        self.leader_term = 0
        self.nodes: dict[str, commands_pb2.NodeRecord] = {}
        self.jobs: dict[str, types_pb2.Job] = {}
        self.tasks: dict[str, commands_pb2.TaskRecord] = {}
        self.request_ids: dict[str, str] = {}
        self.events = EventLog()
        # derived
        self.active_names: dict[str, str] = {}
        self.on_node: dict[str, set[str]] = {}
        # job id -> {task state: number of its tasks in it}; keeps job-state derivation O(1)
        self.job_counts: dict[str, dict[int, int]] = {}
        # Nodes whose desired set changed since the leader last asked (not
        # replicated, not in snapshots: it only tells the agent streams whom to
        # wake). None = unknown (after a restore): every stream checks.
        self.desired_changed: set[str] | None = None

    # ---- derived indexes -------------------------------------------------

    def rebuild_indexes(self) -> None:
        self.active_names = {j.spec.name: j.id for j in self.jobs.values() if j.state not in JOB_FINISHED}
        self.on_node = {nid: set() for nid in self.nodes}
        self.job_counts = {jid: {} for jid in self.jobs}
        for tid, rec in self.tasks.items():
            for nid in holding_nodes(rec):
                self.on_node.setdefault(nid, set()).add(tid)
            counts = self.job_counts.setdefault(rec.task.job_id, {})
            counts[rec.task.state] = counts.get(rec.task.state, 0) + 1

    def begin_change(self, rec: commands_pb2.TaskRecord) -> tuple[frozenset, frozenset, int]:
        """Call before mutating a task; pass the result to end_change()."""
        return desired_keys(rec), holding_nodes(rec), rec.task.state

    def end_change(
        self, rec: commands_pb2.TaskRecord, before: tuple[frozenset, frozenset, int], ctx: ApplyContext
    ) -> None:
        keys_before, hold_before, state_before = before
        keys_after, hold_after = desired_keys(rec), holding_nodes(rec)
        tid = rec.task.id
        if rec.task.state != state_before:
            counts = self.job_counts[rec.task.job_id]
            counts[state_before] -= 1
            counts[rec.task.state] = counts.get(rec.task.state, 0) + 1
        for nid in hold_before - hold_after:
            self.on_node.get(nid, set()).discard(tid)
            ctx.nodes_changed.add(nid)
        for nid in hold_after - hold_before:
            self.on_node.setdefault(nid, set()).add(tid)
            ctx.nodes_changed.add(nid)
        for nid, _attempt in keys_before ^ keys_after:
            self.touch_node(nid, ctx)

    def touch_node(self, node_id: str, ctx: ApplyContext) -> None:
        """The node's desired set changed at this entry: its version becomes the entry's index."""
        rec = self.nodes.get(node_id)
        if rec is not None and rec.desired_version < ctx.index:
            rec.desired_version = ctx.index
            if self.desired_changed is not None:
                self.desired_changed.add(node_id)

    # ---- helpers used by the handlers -----------------------------------

    def emit(self, ctx: ApplyContext, type_: str, message: str, **ids: str) -> None:
        self.events.emit(ctx.time_ms, ctx.term, type_, message, **ids)

    def allocated(self, node_id: str) -> list[int]:
        """[cpu, memory, network, gpus, gpu_memory] requested by tasks holding resources on the node."""
        total = [0, 0, 0, 0, 0]
        for tid in self.on_node.get(node_id, ()):
            r = self.tasks[tid].task.resources
            total[0] += r.cpu_millis
            total[1] += r.memory_bytes
            total[2] += r.network_mbps
            total[3] += r.gpus
            total[4] = max(total[4], r.gpu_memory_bytes)
        return total

    def find_job(self, id_or_name: str) -> types_pb2.Job | None:
        """By id, else the active job of that name, else the newest finished one of that name."""
        job = self.jobs.get(id_or_name)
        if job is not None:
            return job
        jid = self.active_names.get(id_or_name)
        if jid is not None:
            return self.jobs[jid]
        found = None
        for j in self.jobs.values():
            if j.spec.name == id_or_name:
                found = j  # dict order is submit order: the last match is the newest
        return found

    def job_task_ids(self, job: types_pb2.Job) -> list[str]:
        return [f"{job.id}.{i}" for i in range(job.spec.count)]


def holding_nodes(rec: commands_pb2.TaskRecord) -> frozenset:
    t = rec.task
    nodes = set()
    if t.state in ACTIVE and t.node_id:
        nodes.add(t.node_id)
    if t.migrating_to:
        nodes.add(t.migrating_to)
    return frozenset(nodes)


def desired_keys(rec: commands_pb2.TaskRecord) -> frozenset:
    """(node, attempt) pairs this task contributes to desired sets."""
    t = rec.task
    keys = set()
    if t.state in DESIRED and t.node_id:
        keys.add((t.node_id, t.attempt))
    if t.migrating_to:
        keys.add((t.migrating_to, rec.migration_attempt))
    return frozenset(keys)


def node_schedulable(rec: commands_pb2.NodeRecord) -> str:
    """'' when new tasks may be placed on the node, else why not (a constant reason)."""
    n = rec.node
    if n.status != types_pb2.NODE_STATUS_READY:
        return f"node {n.id} is {types_pb2.NodeStatus.Name(n.status).removeprefix('NODE_STATUS_').lower()}"
    if n.draining:
        return f"node {n.id} is draining"
    if n.cordoned:
        return f"node {n.id} is cordoned"
    return ""


def allocatable(rec: commands_pb2.NodeRecord) -> list[int]:
    c, r = rec.node.capacity, rec.node.reserve
    return [
        c.cpu_millis - r.cpu_millis,
        c.memory_bytes - r.memory_bytes,
        c.network_mbps - r.network_mbps,
        c.gpus - r.gpus,
        c.gpu_memory_bytes,
    ]


def free_resources(store: Store, node_id: str) -> list[int]:
    """allocatable - allocated per dimension; the last entry is the per-GPU memory (not summed)."""
    alloc = allocatable(store.nodes[node_id])
    used = store.allocated(node_id)
    return [alloc[0] - used[0], alloc[1] - used[1], alloc[2] - used[2], alloc[3] - used[3], alloc[4]]


_DIM_NAMES = ("cpu", "memory", "network", "gpus", "gpu memory")


def misfit(free: list[int], req: types_pb2.Resources) -> str:
    """'' if req fits into free ([cpu, mem, net, gpus, gpu_mem_per_gpu]), else the first short dimension."""
    need = (req.cpu_millis, req.memory_bytes, req.network_mbps, req.gpus)
    for i, n in enumerate(need):
        if n > free[i]:
            return f"insufficient {_DIM_NAMES[i]} (need {n}, free {free[i]})"
    # GPU memory is per GPU, known only when the node reports it (0 = unknown).
    if req.gpu_memory_bytes and free[4] and req.gpu_memory_bytes > free[4]:
        return f"insufficient gpu memory (need {req.gpu_memory_bytes} per GPU, node has {free[4]})"
    return ""
