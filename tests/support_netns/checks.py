"""The fault suite's checker: compares the client's history, the controllers and the real processes.

Truth about what runs comes from the process table, not from the controller:
every task process carries LEPTON_TASK_ID / LEPTON_TASK_ATTEMPT /
LEPTON_JOB_ID in its environment (agent/runner.py), so reading
/proc/<pid>/environ of every process in each agent's namespace tells which
copies of which tasks run where. The checks (numbers as in issue 7):

1. every acknowledged submit exists with its spec (and no job exists that
   the client never asked for, nor two jobs for one submit);
2. no job whose cancel was acknowledged (or that the controller says is
   cancelled) has a process anywhere;
3. every task of a live job has exactly one process across all agents, on
   the node the controller names, for the attempt the controller names;
4. the controller replicas hold the same state at the same applied index;
5. no agent runs a process for a task copy the controller does not want on
   that node (an orphan).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import grpc

from lepton.v1 import control_pb2, control_pb2_grpc, types_pb2

from .lepton import LeptonOnNetns
from .netns import NetnsCluster
from .workload import History

# Task states in which a task is on its way somewhere: the cluster has not settled while any remains.
UNSETTLED = frozenset(
    {
        types_pb2.TASK_STATE_PENDING,
        types_pb2.TASK_STATE_ASSIGNED,
        types_pb2.TASK_STATE_STARTING,
        types_pb2.TASK_STATE_STOPPING,
    }
)
PLACED = frozenset(
    {types_pb2.TASK_STATE_ASSIGNED, types_pb2.TASK_STATE_STARTING, types_pb2.TASK_STATE_RUNNING}
)
FINISHED_JOB = frozenset(
    {types_pb2.JOB_STATE_COMPLETE, types_pb2.JOB_STATE_FAILED, types_pb2.JOB_STATE_CANCELLED}
)


# ---------------------------------------------------------------------------- the process table
@dataclass(frozen=True)
class TaskProcess:
    host: str
    pid: int
    task_id: str
    attempt: int
    job_id: str


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:  # gone meanwhile, or a kernel thread
        return {}
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[:1] == ["Z"]


def task_processes(net: NetnsCluster, hosts: list[str]) -> list[TaskProcess]:
    """One entry per task copy running in the namespaces of `hosts` (the top process of each copy).

    A task that forks keeps the variables in its children; only processes
    whose parent is not a copy of the same task count, so a shell wrapper
    and its child are one copy, not two.
    """
    out = []
    for host in hosts:
        pids = net[host].pids()
        envs = {pid: _environ(pid) for pid in pids if not _zombie(pid)}
        for pid, env in envs.items():
            tid = env.get("LEPTON_TASK_ID")
            if not tid:
                continue
            parent = envs.get(_ppid(pid), {})
            if parent.get("LEPTON_TASK_ID") == tid and parent.get("LEPTON_TASK_ATTEMPT") == env.get(
                "LEPTON_TASK_ATTEMPT"
            ):
                continue
            out.append(
                TaskProcess(
                    host=host,
                    pid=pid,
                    task_id=tid,
                    attempt=int(env.get("LEPTON_TASK_ATTEMPT", "0") or 0),
                    job_id=env.get("LEPTON_JOB_ID", ""),
                )
            )
    return out


# ---------------------------------------------------------------------------- per-replica reads
def replica_call(lep: LeptonOnNetns, name: str, method: str, request, timeout: float = 5.0):
    """One RPC answered by controller `name` itself (no redirects), or None if it cannot answer."""
    with grpc.insecure_channel(lep.api(name)) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError:
            return None


def _content_digest(jobs, tasks, nodes) -> str:
    """Hash of a replica's replicated content as its (stale) read API shows it.

    Soft state the leader adds to its answers (live usage, last report,
    connected, "cannot place" reasons of pending tasks) is cleared first, so
    that a follower and the leader holding the same replicated state hash
    the same.
    """
    h = hashlib.sha256()
    for j in sorted(jobs, key=lambda j: j.id):
        h.update(j.SerializeToString(deterministic=True))
    for t in sorted(tasks, key=lambda t: t.id):
        t = types_pb2.Task.FromString(t.SerializeToString())
        if t.state == types_pb2.TASK_STATE_PENDING:
            t.reason = ""
        h.update(t.SerializeToString(deterministic=True))
    for n in sorted(nodes, key=lambda n: n.id):
        n = types_pb2.Node.FromString(n.SerializeToString())
        for f in ("usage", "last_report_ms", "connected"):
            n.ClearField(f)
        h.update(n.SerializeToString(deterministic=True))
    return h.hexdigest()


# ClusterStatusRequest.with_digest exists from the commit that added it; before that, a content
# digest over the replica's stale read API stands in (a weaker check: only what the API shows).
_HAS_DIGEST = "with_digest" in control_pb2.ClusterStatusRequest.DESCRIPTOR.fields_by_name


@dataclass
class ReplicaView:
    name: str
    applied_index: int
    digest: str  # the state machine's own digest when the API offers it, else a content digest
    digest_kind: str  # "state_digest" | "content"


def replica_view(lep: LeptonOnNetns, name: str) -> ReplicaView | None:
    """`name`'s applied index and digest, read so that both belong to the same applied index.

    Returns None when the replica did not answer or applied something while
    it was being read (the caller tries again).
    """
    stale = control_pb2.ClusterStatusRequest(stale=True)
    if _HAS_DIGEST:
        # The state machine's own digest and the index it belongs to, read together by the replica.
        status = replica_call(
            lep, name, "GetClusterStatus", control_pb2.ClusterStatusRequest(stale=True, with_digest=True)
        )
        if status is None:
            return None
        if status.state_digest:
            return ReplicaView(name, status.state_digest_index, status.state_digest, "state_digest")
    before = replica_call(lep, name, "GetClusterStatus", stale)
    if before is None:
        return None
    jobs = replica_call(lep, name, "ListJobs", control_pb2.ListJobsRequest(stale=True, include_finished=True))
    tasks = replica_call(lep, name, "ListTasks", control_pb2.ListTasksRequest(stale=True))
    nodes = replica_call(lep, name, "ListNodes", control_pb2.ListNodesRequest(stale=True))
    after = replica_call(lep, name, "GetClusterStatus", stale)
    if None in (jobs, tasks, nodes, after) or after.applied_index != before.applied_index:
        return None
    return ReplicaView(
        name, before.applied_index, _content_digest(jobs.jobs, tasks.tasks, nodes.nodes), "content"
    )


def compare_replicas(lep: LeptonOnNetns, timeout: float = 60.0) -> tuple[list[str], list[ReplicaView]]:
    """Waits (bounded) until every replica reports the same applied index, then compares digests.

    Returns (violations, the last views read).
    """
    deadline = time.monotonic() + timeout
    views: list[ReplicaView | None] = []
    while True:
        views = [replica_view(lep, c) for c in lep.controllers]
        if all(views) and len({v.applied_index for v in views}) == 1:
            if len({v.digest for v in views}) == 1:
                return [], views
            # Same index, different state: that is the violation (re-read once to rule out a race).
            if time.monotonic() >= deadline:
                break
        elif time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if not all(views):
        missing = [c for c, v in zip(lep.controllers, views, strict=True) if v is None]
        return [f"4: replicas {missing} gave no consistent read within {timeout:.0f}s"], [
            v for v in views if v
        ]
    indexes = {v.name: v.applied_index for v in views}
    if len(set(indexes.values())) > 1:
        return [f"4: replicas never reached one applied index within {timeout:.0f}s: {indexes}"], views
    digests = {v.name: v.digest[:16] for v in views}
    return [f"4: replicas differ at applied index {views[0].applied_index}: {digests}"], views


# ---------------------------------------------------------------------------- settling
@dataclass
class ClusterView:
    """The leader's (linearizable) view of jobs and tasks."""

    leader: str
    jobs: dict[str, types_pb2.Job]
    tasks: list[types_pb2.Task]
    nodes: list[types_pb2.Node]
    applied_index: int


def leader_view(lep: LeptonOnNetns) -> ClusterView | None:
    leader = lep.find_leader(timeout=5.0)
    if leader is None:
        return None
    status = replica_call(lep, leader, "GetClusterStatus", control_pb2.ClusterStatusRequest())
    jobs = replica_call(lep, leader, "ListJobs", control_pb2.ListJobsRequest(include_finished=True))
    tasks = replica_call(lep, leader, "ListTasks", control_pb2.ListTasksRequest())
    nodes = replica_call(lep, leader, "ListNodes", control_pb2.ListNodesRequest())
    if None in (status, jobs, tasks, nodes) or status.leader_id != leader:
        return None
    return ClusterView(
        leader, {j.id: j for j in jobs.jobs}, list(tasks.tasks), list(nodes.nodes), status.applied_index
    )


def settled(lep: LeptonOnNetns, view: ClusterView | None) -> str:
    """'' when `view` shows a settled cluster, else what is still moving."""
    if view is None:
        return "no leader answering"
    ready = [n.id for n in view.nodes if n.status == types_pb2.NODE_STATUS_READY and n.connected]
    if len(ready) < len(lep.agents):
        return f"agents ready and connected: {sorted(ready)}"
    moving = [t for t in view.tasks if t.state in UNSETTLED or t.migrating_to]
    if moving:
        shown = ", ".join(
            f"{t.id}/{t.attempt} {types_pb2.TaskState.Name(t.state)[11:].lower()} on {t.node_id or '-'}"
            + (f" -> {t.migrating_to}" if t.migrating_to else "")
            for t in moving[:20]
        )
        return f"{len(moving)} task(s) on their way: {shown}"
    return ""


def wait_settled(lep: LeptonOnNetns, quiet_s: float = 5.0, timeout: float = 120.0) -> tuple[bool, float, str]:
    """Waits until the cluster looks settled for `quiet_s` seconds in a row (bounded by `timeout`).

    Returns (settled, seconds waited, last reason it was not).
    """
    t0 = time.monotonic()
    quiet_since = None
    why = ""
    while time.monotonic() - t0 < timeout:
        why = settled(lep, leader_view(lep))
        now = time.monotonic()
        if why:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return True, now - t0, ""
        time.sleep(0.5)
    return False, time.monotonic() - t0, why


# ---------------------------------------------------------------------------- checks 1, 2, 3, 5
@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, check: int, msg: str) -> None:
        self.violations.append(f"{check}: {msg}")


def _spec_key(spec: types_pb2.JobSpec) -> tuple:
    t = spec.template
    r = t.resources
    return (
        spec.name,
        spec.count,
        t.command,
        tuple(t.args),
        r.cpu_millis,
        r.memory_bytes,
        r.network_mbps,
        r.gpus,
    )


def check_history(history: History, view: ClusterView, procs: list[TaskProcess]) -> Findings:
    """Checks 1, 2, 3 and 5 against one leader view and one process table."""
    f = Findings()
    with history.lock:
        submits = dict(history.submits)
        cancels_acked = set(history.cancels_acked)
    by_name: dict[str, list[types_pb2.Job]] = defaultdict(list)
    for job in view.jobs.values():
        by_name[job.spec.name].append(job)
    tasks_by_job: dict[str, list[types_pb2.Task]] = defaultdict(list)
    for t in view.tasks:
        tasks_by_job[t.job_id].append(t)
    procs_by_task: dict[str, list[TaskProcess]] = defaultdict(list)
    procs_by_job: dict[str, list[TaskProcess]] = defaultdict(list)
    for p in procs:
        procs_by_task[p.task_id].append(p)
        procs_by_job[p.job_id].append(p)

    # 1. acknowledged jobs exist with their spec; nothing exists that nobody submitted; one job per submit.
    for name, jobs in by_name.items():
        sub = submits.get(name)
        if sub is None:
            f.add(1, f"job {name} ({[j.id for j in jobs]}) exists but the client never submitted it")
            continue
        if len(jobs) > 1:
            f.add(1, f"submit {name} (one request id) made {len(jobs)} jobs: {[j.id for j in jobs]}")
        for job in jobs:
            if _spec_key(job.spec) != _spec_key(sub.spec):
                f.add(
                    1,
                    f"job {job.id} ({name}) has spec {_spec_key(job.spec)}, submitted {_spec_key(sub.spec)}",
                )
            if len(tasks_by_job[job.id]) != sub.spec.count:
                f.add(
                    1, f"job {job.id} ({name}) has {len(tasks_by_job[job.id])} tasks, count {sub.spec.count}"
                )
    for sub in submits.values():
        if sub.outcome == "acknowledged" and sub.job_id not in view.jobs:
            f.add(1, f"acknowledged job {sub.job_id} ({sub.name}) is missing")
        if sub.outcome == "rejected" and by_name.get(sub.name):
            f.add(1, f"submit {sub.name} was rejected ({sub.error}) but job(s) exist")

    # 2. cancelled jobs run nothing: acknowledged cancels must have taken effect.
    for jid in sorted(cancels_acked):
        job = view.jobs.get(jid)
        if job is not None and job.state != types_pb2.JOB_STATE_CANCELLED:
            f.add(2, f"cancel of {jid} was acknowledged but the job is {types_pb2.JobState.Name(job.state)}")
    for jid, job in view.jobs.items():
        if (job.state == types_pb2.JOB_STATE_CANCELLED or jid in cancels_acked) and procs_by_job.get(jid):
            where = sorted(f"{p.task_id}/{p.attempt}@{p.host}(pid {p.pid})" for p in procs_by_job[jid])
            f.add(2, f"cancelled job {jid} ({job.spec.name}) still runs: {where}")

    # 3. every task of a live job runs exactly once, where the controller says.
    for jid, job in view.jobs.items():
        if job.state in FINISHED_JOB:
            if job.state != types_pb2.JOB_STATE_CANCELLED:
                # `sleep 3600` never ends by itself: a finished job means its tasks were killed.
                f.add(3, f"job {jid} ({job.spec.name}) is {types_pb2.JobState.Name(job.state)}")
            continue
        for t in tasks_by_job[jid]:
            copies = procs_by_task.get(t.id, [])
            where = sorted(f"{p.host}/attempt {p.attempt}(pid {p.pid})" for p in copies)
            if t.state != types_pb2.TASK_STATE_RUNNING:
                f.add(
                    3,
                    f"task {t.id} of live job is {types_pb2.TaskState.Name(t.state)} ({t.reason}); processes {where}",
                )
            if len(copies) != 1:
                f.add(
                    3,
                    f"task {t.id} has {len(copies)} processes: {where} (controller: {t.node_id}/attempt {t.attempt})",
                )
            elif copies[0].host != t.node_id or copies[0].attempt != t.attempt:
                f.add(
                    3,
                    f"task {t.id} runs on {copies[0].host}/attempt {copies[0].attempt}, "
                    f"controller says {t.node_id}/attempt {t.attempt}",
                )

    # 5. every process belongs to a task copy the controller wants on that host.
    tasks = {t.id: t for t in view.tasks}
    for p in procs:
        t = tasks.get(p.task_id)
        job = view.jobs.get(p.job_id)
        if job is not None and (job.state == types_pb2.JOB_STATE_CANCELLED or job.id in cancels_acked):
            continue  # reported under check 2 already
        wanted = (
            t is not None
            and job is not None
            and job.state not in FINISHED_JOB
            and t.state in PLACED
            and p.attempt == t.attempt
            and p.host in (t.node_id, t.migrating_to)
        )
        if not wanted:
            state = (
                f"{types_pb2.TaskState.Name(t.state)} on {t.node_id}/attempt {t.attempt}"
                if t
                else "unknown task"
            )
            f.add(
                5, f"orphan on {p.host}: {p.task_id}/attempt {p.attempt} (pid {p.pid}); controller: {state}"
            )
    return f
