"""Command handlers for members, leadership and nodes.

Each handler takes (store, ctx, body), validates everything before it
mutates anything, raises a LeptonError to reject (apply turns it into the
result) and returns the proposer's result. Node status transitions live
here, including what DOWN does to the node's tasks.
"""

from __future__ import annotations

from lepton.errors import FailedPrecondition, InvalidArgument, NotFound
from lepton.v1 import commands_pb2, types_pb2

from . import validate
from .lifecycle import drop_target, finish, promote_target, requeue
from .store import DESIRED, TS, ApplyContext, Store

NS = types_pb2.NodeStatus


def _node(store: Store, node_id: str) -> commands_pb2.NodeRecord:
    rec = store.nodes.get(node_id)
    if rec is None:
        raise NotFound(f"node {node_id!r} not found")
    return rec


def status_name(status: int) -> str:
    return NS.Name(status).removeprefix("NODE_STATUS_").lower()


def register_member(store: Store, ctx: ApplyContext, body: commands_pb2.RegisterMember) -> None:
    if not body.id:
        raise InvalidArgument("member id is empty")
    validate.validate_text(body.api_address, "member api address")
    validate.validate_text(body.raft_address, "member raft address")
    new = body.id not in store.members
    rec = store.members.setdefault(body.id, commands_pb2.MemberRecord(id=body.id))
    rec.api_address = body.api_address
    rec.raft_address = body.raft_address
    if new:
        store.emit(ctx, "member.joined", f"controller {body.id} at {body.api_address}")
    return None


def leader_changed(store: Store, ctx: ApplyContext, body: commands_pb2.LeaderChanged) -> None:
    if not body.leader_id:
        raise InvalidArgument("leader id is empty")
    store.leader_id = body.leader_id
    store.leader_api_address = body.api_address
    store.leader_term = ctx.term
    store.emit(ctx, "leader.changed", f"{body.leader_id} leads term {ctx.term} at {body.api_address}")
    return None


def register_node(
    store: Store, ctx: ApplyContext, body: commands_pb2.RegisterNode
) -> commands_pb2.NodeRecord:
    validate.validate_register_node(body)
    rec = store.nodes.get(body.node_id)
    new = rec is None
    if new:
        rec = commands_pb2.NodeRecord()
        rec.node.id = body.node_id
        rec.node.registered_at_ms = ctx.time_ms
        store.nodes[body.node_id] = rec
        store.on_node.setdefault(body.node_id, set())
    n = rec.node
    n.hostname = body.hostname
    n.address = body.address
    n.capacity.CopyFrom(body.capacity)
    n.reserve.CopyFrom(body.reserve)
    n.labels.clear()
    n.labels.update(body.labels)
    del n.gpus[:]
    n.gpus.extend(body.gpus)
    n.agent_version = body.agent_version
    was = n.status
    if was != NS.NODE_STATUS_READY:
        n.status = NS.NODE_STATUS_READY
        n.status_changed_at_ms = ctx.time_ms
    # The agent is (re)connecting: it will get its desired set, which stops any
    # stale copies it still runs, so the note about them has done its job.
    del rec.stale_tasks[:]
    store.touch_node(body.node_id, ctx)
    if new:
        store.emit(ctx, "node.joined", f"node {body.node_id} ({body.hostname}) joined", node_id=body.node_id)
    elif was != NS.NODE_STATUS_READY:
        store.emit(
            ctx,
            "node.ready",
            f"node {body.node_id} re-registered (was {status_name(was)})",
            node_id=body.node_id,
        )
    return rec


def set_node_status(
    store: Store, ctx: ApplyContext, body: commands_pb2.SetNodeStatus
) -> commands_pb2.NodeRecord:
    if body.status not in (NS.NODE_STATUS_READY, NS.NODE_STATUS_SUSPECT, NS.NODE_STATUS_DOWN):
        raise InvalidArgument(f"node status must be ready, suspect or down (got {body.status})")
    validate.validate_text(body.reason, "reason")
    rec = _node(store, body.node_id)
    n = rec.node
    if n.status == body.status:
        return rec
    n.status = body.status
    n.status_changed_at_ms = ctx.time_ms
    name = status_name(body.status)
    why = f": {body.reason}" if body.reason else ""
    if body.status == NS.NODE_STATUS_DOWN:
        _lose_tasks(store, ctx, n.id, body.reason or "node down")
        ctx.nodes_changed.add(n.id)
    store.emit(ctx, f"node.{name}", f"node {n.id} is {name}{why}", node_id=n.id)
    return rec


def _lose_tasks(store: Store, ctx: ApplyContext, node_id: str, reason: str) -> None:
    """A node went down: its copies are lost; the tasks run elsewhere.

    Tasks placed there go back to pending (new attempt); a migration whose
    source died promotes its target copy; a migration whose target died is
    abandoned; STOPPING tasks count as stopped. The lost copies are noted on
    the node so that its agent, should it come back, is told to stop them.
    """
    rec_node = store.nodes[node_id]
    for tid in sorted(store.on_node.get(node_id, ())):
        rec = store.tasks[tid]
        t = rec.task
        if t.migrating_to == node_id:
            rec_node.stale_tasks.add(task_id=tid, attempt=rec.migration_attempt)
            drop_target(store, ctx, rec)
            store.emit(
                ctx,
                "task.migration_failed",
                f"task {tid}: target node {node_id} down",
                node_id=node_id,
                task_id=tid,
            )
            continue
        rec_node.stale_tasks.add(task_id=tid, attempt=t.attempt)
        if t.migrating_to:
            state = rec.migration_state if rec.migration_state in DESIRED else TS.TASK_STATE_ASSIGNED
            target = t.migrating_to
            promote_target(store, ctx, rec, state)
            store.emit(
                ctx,
                "task.lost",
                f"task {tid} lost on {node_id} ({reason}); its migration copy on {target} takes over",
                node_id=node_id,
                task_id=tid,
                job_id=t.job_id,
            )
        elif t.state == TS.TASK_STATE_STOPPING:
            finish(store, ctx, rec, TS.TASK_STATE_STOPPED, f"stopped: node {node_id} down")
        else:
            requeue(store, ctx, rec, f"lost: node {node_id} down ({reason})")
            store.emit(
                ctx,
                "task.lost",
                f"task {tid} lost on {node_id} ({reason}); rescheduling",
                node_id=node_id,
                task_id=tid,
                job_id=t.job_id,
            )


def cordon_node(store: Store, ctx: ApplyContext, body: commands_pb2.CordonNode) -> commands_pb2.NodeRecord:
    validate.validate_text(body.reason, "reason")
    rec = _node(store, body.node_id)
    if not rec.node.cordoned:
        rec.node.cordoned = True
        why = f": {body.reason}" if body.reason else ""
        store.emit(ctx, "node.cordoned", f"node {body.node_id} cordoned{why}", node_id=body.node_id)
    return rec


def uncordon_node(
    store: Store, ctx: ApplyContext, body: commands_pb2.UncordonNode
) -> commands_pb2.NodeRecord:
    rec = _node(store, body.node_id)
    if rec.node.cordoned or rec.node.draining:
        # Uncordon also ends a drain in progress: the node takes work again.
        rec.node.cordoned = False
        rec.node.draining = False
        rec.drain_deadline_ms = 0
        rec.drain_max_parallel = 0
        store.emit(ctx, "node.uncordoned", f"node {body.node_id} uncordoned", node_id=body.node_id)
    return rec


def drain_node(store: Store, ctx: ApplyContext, body: commands_pb2.DrainNode) -> commands_pb2.NodeRecord:
    validate.validate_drain(body)
    rec = _node(store, body.node_id)
    n = rec.node
    if body.cancel:
        if not n.draining:
            raise FailedPrecondition(f"node {n.id} is not draining")
        n.draining = False
        rec.drain_deadline_ms = 0
        rec.drain_max_parallel = 0
        store.emit(
            ctx, "node.drain_cancelled", f"drain of node {n.id} cancelled (stays cordoned)", node_id=n.id
        )
        return rec
    n.cordoned = True
    n.draining = True
    rec.drain_deadline_ms = body.deadline_ms
    rec.drain_max_parallel = body.max_parallel
    store.emit(ctx, "node.draining", f"node {n.id} draining", node_id=n.id)
    ctx.nodes_changed.add(n.id)  # an empty node is drained at once
    return rec


def complete_drains(store: Store, ctx: ApplyContext) -> None:
    """A draining node with no task holding resources on it is drained."""
    for nid in sorted(ctx.nodes_changed):
        rec = store.nodes.get(nid)
        if rec is None or not rec.node.draining or store.on_node.get(nid):
            continue
        rec.node.draining = False
        rec.drain_deadline_ms = 0
        rec.drain_max_parallel = 0
        store.emit(ctx, "node.drained", f"node {nid} drained (stays cordoned)", node_id=nid)
