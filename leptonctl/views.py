"""Explicit converters from lepton.v1 messages to the plain dicts lepton-ctl prints.

These dicts *are* the stable `-o json` / `-o yaml` schema documented in
docs/cli.md: snake_case keys, cpu in millicores, memory in bytes, network in
Mbit/s, times in Unix milliseconds, enums as short lower-case names
("running", not "TASK_STATE_RUNNING"). They are written by hand rather than
with `json_format.MessageToDict` so that a proto change never silently changes
what scripts see, and so that defaults (zeros, empty lists) are always present.
"""

from __future__ import annotations

from typing import Any

from lepton.jobspec import format_constraint
from lepton.v1 import control_pb2, types_pb2


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    """TASK_STATE_RUNNING -> 'running'; an unknown number -> 'unknown(9)'."""
    try:
        return enum_type.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return f"unknown({value})"


def task_state(value: int) -> str:
    return enum_name(types_pb2.TaskState, value, "TASK_STATE_")


def job_state(value: int) -> str:
    return enum_name(types_pb2.JobState, value, "JOB_STATE_")


def job_type(value: int) -> str:
    # UNSPECIFIED is treated as a service by the controller (types.proto).
    return (
        "service"
        if value == types_pb2.JOB_TYPE_UNSPECIFIED
        else enum_name(types_pb2.JobType, value, "JOB_TYPE_")
    )


def resources(r: types_pb2.Resources) -> dict[str, int]:
    return {
        "cpu_millis": r.cpu_millis,
        "memory_bytes": r.memory_bytes,
        "network_mbps": r.network_mbps,
        "gpus": r.gpus,
        "gpu_memory_bytes": r.gpu_memory_bytes,
    }


def usage(u: types_pb2.NodeUsage) -> dict[str, Any]:
    """Live usage in the same four units as the resource vectors, plus percentages."""
    return {
        "cpu_millis": u.cpu_millis,
        "memory_bytes": u.memory_used_bytes,
        "network_mbps": u.network_mbps,
        "gpus": u.gpus_busy,
        "cpu_percent": round(u.cpu_percent, 2),
        "memory_available_bytes": u.memory_available_bytes,
        "load1": round(u.load1, 2),
        "time_ms": u.time_ms,
    }


def gpu(g: types_pb2.GpuInfo) -> dict[str, Any]:
    return {
        "index": g.index,
        "uuid": g.uuid,
        "model": g.model,
        "memory_total_bytes": g.memory_total_bytes,
        "memory_used_bytes": g.memory_used_bytes,
        "utilization_percent": round(g.utilization_percent, 2),
    }


def node(n: types_pb2.Node) -> dict[str, Any]:
    return {
        "id": n.id,
        "hostname": n.hostname,
        "address": n.address,
        "state": n.state or enum_name(types_pb2.NodeStatus, n.status, "NODE_STATUS_"),
        "status": enum_name(types_pb2.NodeStatus, n.status, "NODE_STATUS_"),
        "cordoned": n.cordoned,
        "draining": n.draining,
        "connected": n.connected,
        "labels": dict(sorted(n.labels.items())),
        "capacity": resources(n.capacity),
        "allocatable": resources(n.allocatable),
        "allocated": resources(n.allocated),
        "usage": usage(n.usage),
        "gpus": [gpu(g) for g in n.gpus],
        "agent_version": n.agent_version,
        "last_report_ms": n.last_report_ms,
    }


def task(t: types_pb2.Task) -> dict[str, Any]:
    return {
        "id": t.id,
        "job_id": t.job_id,
        "job_name": t.job_name,
        "index": t.index,
        "node": t.node_id,
        "state": task_state(t.state),
        "reason": t.reason,
        "attempt": t.attempt,
        "exit_code": t.exit_code,
        "restarts": t.restarts,
        "priority": t.priority,
        "resources": resources(t.resources),
        "previous_node": t.previous_node_id,
        "migrating_to": t.migrating_to,
        "created_at_ms": t.created_at_ms,
        "started_at_ms": t.started_at_ms,
        "finished_at_ms": t.finished_at_ms,
    }


def node_detail(d: control_pb2.NodeDetail) -> dict[str, Any]:
    out = node(d.node)
    out["tasks"] = [task(t) for t in d.tasks]
    return out


def job(j: types_pb2.Job, tasks: list[types_pb2.Task] | None = None) -> dict[str, Any]:
    s = j.spec
    t = s.template
    out: dict[str, Any] = {
        "id": j.id,
        "name": s.name,
        "priority": s.priority,
        "type": job_type(s.type),
        "count": s.count,
        "state": job_state(j.state),
        "command": [t.command, *t.args] if t.command else list(t.args),
        "resources": resources(t.resources),
        "constraints": [format_constraint(c) for c in t.constraints],
        "migratable": t.migratable,
        "submitted_at_ms": j.submitted_at_ms,
        "request_id": j.request_id,
    }
    if tasks is not None:
        out["tasks"] = [
            {"id": x.id, "node": x.node_id, "state": task_state(x.state), "reason": x.reason}
            for x in sorted(tasks, key=lambda x: (x.index, x.id))
        ]
    return out


def job_detail(d: control_pb2.JobDetail) -> dict[str, Any]:
    return job(d.job, list(d.tasks))


def member(m: control_pb2.Member) -> dict[str, Any]:
    return {
        "id": m.id,
        "api_address": m.api_address,
        "raft_address": m.raft_address,
        "role": m.role,
        "healthy": m.healthy,
        "match_index": m.match_index,
    }


def cluster_status(s: control_pb2.ClusterStatus) -> dict[str, Any]:
    return {
        "leader": s.leader_id,
        "leader_api_address": s.leader_api_address,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "answered_by": s.answered_by,
        "members": [member(m) for m in s.members],
        "nodes_total": s.nodes_total,
        "nodes_ready": s.nodes_ready,
        "jobs_total": s.jobs_total,
        "tasks_by_state": dict(sorted(s.tasks_by_state.items())),
    }


def event(e: types_pb2.Event) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time_ms": e.time_ms,
        "type": e.type,
        "message": e.message,
        "node_id": e.node_id,
        "job_id": e.job_id,
        "task_id": e.task_id,
        "term": e.term,
    }


def rebalance_plan(p: control_pb2.RebalancePlan) -> dict[str, Any]:
    return {
        "applied": p.applied,
        "moves": [
            {
                "task_id": m.task_id,
                "job_id": m.job_id,
                "from_node": m.from_node,
                "to_node": m.to_node,
                "reason": m.reason,
                "score": round(m.score, 4),
                "kind": m.kind,
            }
            for m in p.moves
        ],
        "notes": list(p.notes),
    }
