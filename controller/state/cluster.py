"""ClusterState: the deterministic state machine that sits on Raft.

Contract of `apply(index, term, data)`:
- `data` is one encoded `lepton.v1.Command` (see commands.py). apply uses
  only the command, the entry's index and term, and the current state: no
  clock, randomness, uuid or I/O. Time comes from `Command.time_ms`.
- It never raises for a bad command. An undecodable entry, an unsupported
  version, an unknown command kind, invalid input or a domain rejection
  (NotFound, AlreadyExists, FailedPrecondition for fencing...) is returned
  as a `lepton.errors.LeptonError` instance and logged; the entities are
  unchanged (a fencing rejection records a plan.rejected event). The
  proposer raises it (`commands.raise_if_error`).
- On success it returns the command's result, always a fresh copy the
  caller may keep or mutate:

  | command          | result                                   |
  | ---------------- | ---------------------------------------- |
  | RegisterMember   | None                                     |
  | LeaderChanged    | None                                     |
  | RegisterNode     | types_pb2.Node                           |
  | SetNodeStatus    | types_pb2.Node                           |
  | Cordon/Uncordon  | types_pb2.Node                           |
  | DrainNode        | types_pb2.Node                           |
  | SubmitJob        | types_pb2.Job (the first one on a retry) |
  | CancelJob        | types_pb2.Job                            |
  | CommitPlan       | plan.PlanResult                          |
  | TaskUpdate       | types_pb2.Task, or None when stale        |
  | MigrateTask      | types_pb2.Task                           |
  | CancelMigration  | types_pb2.Task                           |

- Every applied entry, rejected or not, advances `applied_index`.

Queries are read-only and return protobuf copies (types_pb2.Node/Job/Task/
Event, agent_pb2.TaskAssignment, control_pb2.Member): callers may fill in
soft state (usage, connected, role) on them without touching the replica.
Lists come in a deterministic order.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from lepton.errors import FailedPrecondition, LeptonError, NotFound
from lepton.v1 import agent_pb2, commands_pb2, control_pb2, types_pb2

from . import commands, jobs, nodes, plan, snapshot, tasks
from .lifecycle import refresh_jobs
from .store import ACTIVE, DESIRED, JOB_FINISHED, TS, ApplyContext, Store, allocatable, task_state_name

log = logging.getLogger("lepton.state")

_HANDLERS = {
    "register_member": nodes.register_member,
    "leader_changed": nodes.leader_changed,
    "register_node": nodes.register_node,
    "set_node_status": nodes.set_node_status,
    "cordon_node": nodes.cordon_node,
    "uncordon_node": nodes.uncordon_node,
    "drain_node": nodes.drain_node,
    "submit_job": jobs.submit_job,
    "cancel_job": jobs.cancel_job,
    "commit_plan": plan.commit_plan,
    "task_update": tasks.task_update,
    "task_updates": tasks.task_updates,
    "migrate_task": tasks.migrate_task,
    "cancel_migration": tasks.cancel_migration,
}


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    leader_id: str
    api_address: str
    term: int  # the term of the entry that announced this leader


class ClusterState:
    """The replicated cluster state. Implements controller.raft.types.StateMachine."""

    def __init__(self) -> None:
        self._s = Store()

    # ---- StateMachine ------------------------------------------------------

    def apply(self, index: int, term: int, data: bytes) -> object:
        s = self._s
        if index <= s.applied_index:
            # The driver replays from a snapshot; an entry seen twice must not act twice.
            log.warning("entry %d already applied (applied index %d): ignored", index, s.applied_index)
            return FailedPrecondition(f"entry {index} already applied")
        s.applied_index, s.applied_term = index, term
        cmd = commands.decode(data)
        if isinstance(cmd, LeptonError):
            log.error("entry %d (term %d) rejected: %s", index, term, cmd)
            return cmd
        kind = commands.kind(cmd)
        handler = _HANDLERS.get(kind)
        if handler is None:  # in the proto but not wired here: still fail loudly
            err = FailedPrecondition(f"command {kind} is not supported by this replica")
            log.error("entry %d (term %d) rejected: %s", index, term, err)
            return err
        ctx = ApplyContext(index, term, cmd.time_ms, cmd.plan_term, cmd.request_id)
        try:
            result = handler(s, ctx, getattr(cmd, kind))
            nodes.complete_drains(s, ctx)
            refresh_jobs(s, ctx)
        except LeptonError as err:
            log.info("entry %d %s rejected: %s", index, kind, err)
            return err
        except Exception as exc:  # a bug; every replica hits it identically, so state stays consistent
            log.exception("entry %d %s failed inside apply", index, kind)
            return LeptonError(f"internal error applying {kind}: {exc}")
        return self._public(result)

    def snapshot(self) -> bytes:
        return snapshot.encode(self._s)

    def restore(self, data: bytes) -> None:
        """Replaces the whole state. Raises FailedPrecondition for unusable snapshot data."""
        self._s = snapshot.decode(data)

    def digest(self) -> str:
        """Hash of the canonical serialisation: equal replicated states give equal digests."""
        return snapshot.digest(self._s)

    @property
    def applied_index(self) -> int:
        return self._s.applied_index

    @property
    def applied_term(self) -> int:
        return self._s.applied_term

    # ---- queries: nodes ----------------------------------------------------

    def nodes(self) -> list[types_pb2.Node]:
        """All nodes in registration order."""
        return [self._node_view(rec) for rec in self._s.nodes.values()]

    def node_statuses(self) -> list[tuple[str, int]]:
        """(node id, NodeStatus) in registration order, without building node views.

        The liveness loop needs only these, twice a second: nodes() copies every
        record and sums its tasks, which costs tens of ms at 5,000 nodes.
        """
        return [(nid, rec.node.status) for nid, rec in self._s.nodes.items()]

    def any_draining(self) -> bool:
        """Whether some node is draining (cheap: the drain loop asks after every commit)."""
        return any(rec.node.draining for rec in self._s.nodes.values())

    def node(self, node_id: str) -> types_pb2.Node:
        rec = self._s.nodes.get(node_id)
        if rec is None:
            raise NotFound(f"node {node_id!r} not found")
        return self._node_view(rec)

    def has_node(self, node_id: str) -> bool:
        return node_id in self._s.nodes

    def desired_for_node(self, node_id: str) -> tuple[int, list[agent_pb2.TaskAssignment]]:
        """(version, assignments) the node's agent should run, sorted by task id.

        The version is the Raft index of the last change to this set, so it
        only grows, also across leader changes and restarts. An unknown node
        gets (0, []).
        """
        s = self._s
        rec = s.nodes.get(node_id)
        if rec is None:
            return 0, []
        out = []
        for tid in sorted(s.on_node.get(node_id, ())):
            trec = s.tasks[tid]
            t = trec.task
            if t.node_id == node_id and t.state in DESIRED:
                attempt = t.attempt
            elif t.migrating_to == node_id:
                attempt = trec.migration_attempt
            else:
                continue
            job = s.jobs[t.job_id]
            out.append(
                agent_pb2.TaskAssignment(
                    task_id=t.id,
                    attempt=attempt,
                    job_id=t.job_id,
                    job_name=t.job_name,
                    index=t.index,
                    priority=t.priority,
                    template=job.spec.template,
                    job_type=job.spec.type,
                )
            )
        return rec.desired_version, out

    def desired_version(self, node_id: str) -> int:
        rec = self._s.nodes.get(node_id)
        return rec.desired_version if rec is not None else 0

    def take_desired_changes(self) -> set[str] | None:
        """Nodes whose desired set changed since the last call; None = unknown, check every node.

        Not replicated state: the leader uses it to wake only the agent streams
        that have something new to send.
        """
        changed, self._s.desired_changed = self._s.desired_changed, set()
        return changed

    def stale_tasks(self, node_id: str) -> list[tuple[str, int]]:
        """(task id, attempt) of copies lost when the node went down, until its agent re-registers."""
        rec = self._s.nodes.get(node_id)
        return [(st.task_id, st.attempt) for st in rec.stale_tasks] if rec is not None else []

    def drain_info(self, node_id: str) -> tuple[int, int]:
        """(deadline_ms, max_parallel) of a draining node; (0, 0) otherwise."""
        rec = self._s.nodes.get(node_id)
        if rec is None or not rec.node.draining:
            return 0, 0
        return rec.drain_deadline_ms, rec.drain_max_parallel

    # ---- queries: jobs and tasks -----------------------------------------

    def stopping_on_node(self, node_id: str) -> list[tuple[str, int]]:
        """(task id, attempt) of the node's STOPPING tasks, sorted: cancelled, not yet reported stopped."""
        s = self._s
        out = []
        for tid in sorted(s.on_node.get(node_id, ())):
            t = s.tasks[tid].task
            if t.node_id == node_id and t.state == TS.TASK_STATE_STOPPING:
                out.append((t.id, t.attempt))
        return out

    def jobs(self, include_finished: bool = False) -> list[types_pb2.Job]:
        """Jobs in submission order; finished ones (complete, failed, cancelled) only on request."""
        return [_copy(j) for j in self._s.jobs.values() if include_finished or j.state not in JOB_FINISHED]

    def job(self, id_or_name: str) -> types_pb2.Job:
        """By id, else the active job with that name, else the newest finished one."""
        job = self._s.find_job(id_or_name)
        if job is None:
            raise NotFound(f"job {id_or_name!r} not found")
        return _copy(job)

    def job_for_request(self, request_id: str) -> types_pb2.Job | None:
        """The job a SubmitJob with this request id created, if any."""
        jid = self._s.request_ids.get(request_id)
        return _copy(self._s.jobs[jid]) if jid in self._s.jobs else None

    def task(self, task_id: str) -> types_pb2.Task:
        rec = self._s.tasks.get(task_id)
        if rec is None:
            raise NotFound(f"task {task_id!r} not found")
        return _copy(rec.task)

    def tasks(
        self, job_id: str | None = None, node_id: str | None = None, state: int | None = None
    ) -> list[types_pb2.Task]:
        """Tasks matching every given filter, in creation order.

        node_id matches the node a task is (or was last) placed on and the
        target of an in-flight migration; state None or 0 means any.
        """
        s = self._s
        if job_id:
            job = s.jobs.get(job_id)
            recs = [s.tasks[tid] for tid in s.job_task_ids(job)] if job is not None else []
        else:
            recs = s.tasks.values()
        out = []
        for rec in recs:
            t = rec.task
            if node_id and t.node_id != node_id and t.migrating_to != node_id:
                continue
            if state and t.state != state:
                continue
            out.append(_copy(t))
        return out

    def holding_tasks_sliced(self, size: int = 2000) -> Iterator[list[types_pb2.Task]]:
        """Tasks holding resources on a node (placed and not finished, or migrating), in
        creation order, as copies in slices of `size` records for a caller that yields between them.

        What a placement view needs of the tasks: copying only these, not every
        task, halves the leader's work per round while a big backlog is pending.
        Even so, at 50,000 tasks the copies take about half a second, too long to
        hold an event loop that must send Raft heartbeats: hence the slices. The
        ids are taken up front; a task that changes between two slices is copied
        as it is when its slice comes (so the whole is not one consistent
        snapshot: a placement plan built from it is checked again by apply, item
        by item).
        """
        tasks = self._s.tasks
        ids = list(tasks)
        for i in range(0, len(ids), size):
            out = []
            for tid in ids[i : i + size]:
                rec = tasks.get(tid)
                if rec is not None and (
                    (rec.task.node_id and rec.task.state in ACTIVE) or rec.task.migrating_to
                ):
                    out.append(_copy(rec.task))
            yield out

    def nodes_sliced(self, size: int = 500) -> Iterator[list[types_pb2.Node]]:
        """nodes() in slices (see holding_tasks_sliced)."""
        nodes = self._s.nodes
        ids = list(nodes)
        for i in range(0, len(ids), size):
            yield [self._node_view(nodes[nid]) for nid in ids[i : i + size] if nid in nodes]

    def pending_tasks(self) -> list[types_pb2.Task]:
        """PENDING tasks of active jobs in placement order: priority desc, then submit order, then index."""
        s = self._s
        pending = [rec.task for rec in s.tasks.values() if rec.task.state == TS.TASK_STATE_PENDING]
        pending.sort(key=lambda t: (-t.priority, s.jobs[t.job_id].submit_index, t.index))
        return [_copy(t) for t in pending]

    def preferred_node(self, task_id: str) -> str:
        """Placement hint left by a stop-then-start migration ('' when none)."""
        rec = self._s.tasks.get(task_id)
        return rec.preferred_node if rec is not None else ""

    def migrations(self) -> list[types_pb2.Task]:
        """Tasks with a make-before-break move in flight (migrating_to set)."""
        return [_copy(rec.task) for rec in self._s.tasks.values() if rec.task.migrating_to]

    # ---- queries: cluster --------------------------------------------------

    def events(
        self, since_seq: int = 0, types=(), node_id: str = "", job_id: str = "", limit: int = 0
    ) -> list[types_pb2.Event]:
        """Retained events with seq > since_seq; types are prefixes; limit keeps the newest."""
        return self._s.events.since(since_seq, types, node_id, job_id, limit)

    @property
    def last_event_seq(self) -> int:
        return self._s.events.last_seq

    def members(self) -> list[control_pb2.Member]:
        """Registered controller replicas, sorted by id (role/health are soft state: unset)."""
        return [
            control_pb2.Member(id=m.id, api_address=m.api_address, raft_address=m.raft_address)
            for _, m in sorted(self._s.members.items())
        ]

    def leader(self) -> LeaderInfo:
        s = self._s
        return LeaderInfo(s.leader_id, s.leader_api_address, s.leader_term)

    def counts(self) -> dict:
        """nodes_total, nodes_ready, jobs_total (active jobs), jobs_all, tasks_by_state {'running': n, ...}."""
        s = self._s
        # Count the enum values first and name them after: a name per task made this
        # the most expensive read on a 50,000-task cluster polled for its status.
        by_value = collections.Counter(rec.task.state for rec in s.tasks.values())
        by_state = {task_state_name(v): n for v, n in by_value.items()}
        return {
            "nodes_total": len(s.nodes),
            "nodes_ready": sum(1 for r in s.nodes.values() if r.node.status == types_pb2.NODE_STATUS_READY),
            "jobs_total": sum(1 for j in s.jobs.values() if j.state not in JOB_FINISHED),
            "jobs_all": len(s.jobs),
            "tasks_by_state": dict(sorted(by_state.items())),
        }

    # ---- conversions -------------------------------------------------------

    def _node_view(self, rec: commands_pb2.NodeRecord) -> types_pb2.Node:
        n = _copy(rec.node)
        a = allocatable(rec)
        n.allocatable.cpu_millis, n.allocatable.memory_bytes, n.allocatable.network_mbps = a[0], a[1], a[2]
        n.allocatable.gpus, n.allocatable.gpu_memory_bytes = a[3], a[4]
        u = self._s.allocated(n.id)
        n.allocated.cpu_millis, n.allocated.memory_bytes, n.allocated.network_mbps = u[0], u[1], u[2]
        n.allocated.gpus, n.allocated.gpu_memory_bytes = u[3], u[4]
        parts = [types_pb2.NodeStatus.Name(n.status).removeprefix("NODE_STATUS_").lower()]
        if n.cordoned:
            parts.append("cordoned")
        if n.draining:
            parts.append("draining")
        n.state = ",".join(parts)
        return n

    def _public(self, result: object) -> object:
        if isinstance(result, commands_pb2.NodeRecord):
            return self._node_view(result)
        if isinstance(result, (types_pb2.Job, types_pb2.Task)):
            return _copy(result)
        return result


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out
