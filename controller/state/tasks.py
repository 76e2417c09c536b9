"""Command handlers for task progress and moves: TaskUpdate, MigrateTask, CancelMigration.

A TaskUpdate names the attempt it is about. The task's current attempt (or
the attempt of its migration's target copy) is acted on; anything else is a
report about a copy that no longer matters (lost, restarted, preempted) and
is ignored: the result is None and nothing changes.

Make-before-break for services: MigrateTask gives the task a target copy
(migrating_to, its own attempt) that joins the target's desired set while
the old copy keeps running; when the target copy reports RUNNING it becomes
the task and the old copy leaves the source's desired set (its agent stops
it). Batch tasks, and moves with stop_then_start, go back to pending with
the target as a preferred node.
"""

from __future__ import annotations

from lepton.errors import FailedPrecondition, InvalidArgument, LeptonError, NotFound
from lepton.v1 import commands_pb2, types_pb2

from . import validate
from .lifecycle import drop_target, finish, is_service, promote_target, requeue, should_restart
from .plan import check_fencing
from .store import (
    ACTIVE,
    DESIRED,
    TS,
    ApplyContext,
    Store,
    free_resources,
    misfit,
    node_schedulable,
    task_state_name,
)

_REPORTABLE = frozenset(
    {
        TS.TASK_STATE_STARTING,
        TS.TASK_STATE_RUNNING,
        TS.TASK_STATE_SUCCEEDED,
        TS.TASK_STATE_FAILED,
        TS.TASK_STATE_STOPPED,
    }
)


def _task(store: Store, task_id: str) -> commands_pb2.TaskRecord:
    rec = store.tasks.get(task_id)
    if rec is None:
        raise NotFound(f"task {task_id!r} not found")
    return rec


def task_update(store: Store, ctx: ApplyContext, body: commands_pb2.TaskUpdate) -> types_pb2.Task | None:
    if body.state not in _REPORTABLE:
        raise InvalidArgument(
            f"a task update must report starting, running, succeeded, failed or stopped (got {body.state})"
        )
    validate.validate_text(body.reason, "reason")
    rec = _task(store, body.task_id)
    t = rec.task
    if t.migrating_to and body.attempt == rec.migration_attempt:
        if body.node_id and body.node_id != t.migrating_to:
            return None
        _target_update(store, ctx, rec, body)
        return t
    if body.attempt != t.attempt or t.state not in ACTIVE:
        return None  # a stale copy's report
    if body.node_id and body.node_id != t.node_id:
        return None
    s = body.state
    if s == TS.TASK_STATE_STARTING:
        if t.state != TS.TASK_STATE_ASSIGNED:
            return None
        _set_state(store, ctx, rec, TS.TASK_STATE_STARTING)
    elif s == TS.TASK_STATE_RUNNING:
        if t.state not in (TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING):
            return None
        _set_state(store, ctx, rec, TS.TASK_STATE_RUNNING)
        t.started_at_ms = ctx.time_ms
        store.emit(ctx, "task.started", f"task {t.id} running on {t.node_id}", **_ids(t))
    else:
        _exited(store, ctx, rec, body)
    return t


def task_updates(store: Store, ctx: ApplyContext, body: commands_pb2.TaskUpdates) -> list[LeptonError | None]:
    """Each update as task_update applies it, in order; returns None or the error for each."""
    results: list[LeptonError | None] = []
    for upd in body.updates:
        try:
            task_update(store, ctx, upd)  # validates before it changes anything
        except LeptonError as e:
            results.append(e)
        else:
            results.append(None)
    return results


def _exited(
    store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, body: commands_pb2.TaskUpdate
) -> None:
    t = rec.task
    node = t.node_id
    how = f"exit code {body.exit_code}" + (f", {body.reason}" if body.reason else "")
    if t.state == TS.TASK_STATE_STOPPING:
        # Stopped on request (job cancelled): terminal whatever the exit.
        finish(store, ctx, rec, TS.TASK_STATE_STOPPED, t.reason or "stopped", body.exit_code)
        store.emit(ctx, "task.stopped", f"task {t.id} stopped on {node}", **_ids(t, node))
        return
    if t.migrating_to:
        # The old copy ended during a make-before-break move: the new copy carries on.
        state = rec.migration_state if rec.migration_state in DESIRED else TS.TASK_STATE_ASSIGNED
        target = t.migrating_to
        promote_target(store, ctx, rec, state)
        store.emit(
            ctx,
            "task.migrated",
            f"task {t.id}: old copy on {node} ended ({how}); {target} takes over",
            **_ids(t),
        )
        return
    success = body.state == TS.TASK_STATE_SUCCEEDED
    kind = {TS.TASK_STATE_SUCCEEDED: "exited", TS.TASK_STATE_FAILED: "failed"}.get(body.state, "stopped")
    store.emit(ctx, f"task.{kind}", f"task {t.id} {kind} on {node} ({how})", **_ids(t, node))
    job = store.jobs[t.job_id]
    if should_restart(job, t.restarts, success):
        requeue(store, ctx, rec, f"restarting after {task_state_name(body.state)} ({how})")
        t.restarts += 1
        t.exit_code = body.exit_code
        store.emit(ctx, "task.restarting", f"task {t.id} restart {t.restarts}", **_ids(t, node))
    else:
        finish(store, ctx, rec, body.state, body.reason or task_state_name(body.state), body.exit_code)


def _target_update(
    store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, body: commands_pb2.TaskUpdate
) -> None:
    t = rec.task
    s = body.state
    if s == TS.TASK_STATE_STARTING:
        rec.migration_state = s
    elif s == TS.TASK_STATE_RUNNING:
        source = promote_target(store, ctx, rec, TS.TASK_STATE_RUNNING)
        store.emit(ctx, "task.migrated", f"task {t.id} moved from {source} to {t.node_id}", **_ids(t))
    else:
        target = drop_target(store, ctx, rec)
        store.emit(
            ctx,
            "task.migration_failed",
            f"task {t.id}: copy on {target} ended before running ({task_state_name(s)}, exit code {body.exit_code}); "
            f"it stays on {t.node_id}",
            **_ids(t, target),
        )


def migrate_task(store: Store, ctx: ApplyContext, body: commands_pb2.MigrateTask) -> types_pb2.Task:
    check_fencing(store, ctx, "migration")
    validate.validate_text(body.reason, "reason")
    rec = _task(store, body.task_id)
    t = rec.task
    if t.state not in DESIRED:
        raise FailedPrecondition(f"task {t.id} is {task_state_name(t.state)}: only placed tasks can move")
    if t.attempt != body.expected_attempt:
        raise FailedPrecondition(
            f"task {t.id} is at attempt {t.attempt}, migration planned for {body.expected_attempt}"
        )
    if t.migrating_to:
        raise FailedPrecondition(f"task {t.id} is already moving to {t.migrating_to}")
    target = body.target_node_id
    if target:
        node = store.nodes.get(target)
        if node is None:
            raise NotFound(f"node {target!r} not found")
        if target == t.node_id:
            raise InvalidArgument(f"task {t.id} already runs on {target}")
        why = node_schedulable(node)
        if why:
            raise FailedPrecondition(why)
    why = body.reason or "migration"
    job = store.jobs[t.job_id]
    if target and is_service(job) and not body.stop_then_start:
        if t.state != TS.TASK_STATE_RUNNING:
            raise FailedPrecondition(
                f"task {t.id} is not running yet: make-before-break needs a running copy"
            )
        short = misfit(free_resources(store, target), t.resources)
        if short:
            raise FailedPrecondition(f"task {t.id} does not fit on {target}: {short}")
        before = store.begin_change(rec)
        t.migrating_to = target
        rec.migration_attempt = rec.next_attempt
        rec.next_attempt += 1
        rec.migration_state = TS.TASK_STATE_ASSIGNED
        t.updated_at_ms = ctx.time_ms
        store.end_change(rec, before, ctx)
        store.emit(ctx, "task.migrating", f"task {t.id} moving {t.node_id} -> {target} ({why})", **_ids(t))
        return t
    source = t.node_id
    requeue(store, ctx, rec, f"migrating ({why})")
    rec.preferred_node = target
    where = target or "anywhere"
    store.emit(
        ctx,
        "task.migrating",
        f"task {t.id} stopped on {source} to restart {where} ({why})",
        **_ids(t, source),
    )
    return t


def cancel_migration(store: Store, ctx: ApplyContext, body: commands_pb2.CancelMigration) -> types_pb2.Task:
    validate.validate_text(body.reason, "reason")
    rec = _task(store, body.task_id)
    t = rec.task
    if not t.migrating_to:
        raise FailedPrecondition(f"task {t.id} is not migrating")
    target = drop_target(store, ctx, rec)
    why = f": {body.reason}" if body.reason else ""
    store.emit(ctx, "task.migration_cancelled", f"task {t.id} stays on {t.node_id}{why}", **_ids(t, target))
    return t


def _set_state(store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, state: int) -> None:
    before = store.begin_change(rec)
    rec.task.state = state
    rec.task.updated_at_ms = ctx.time_ms
    store.end_change(rec, before, ctx)
    ctx.jobs_changed.add(rec.task.job_id)


def _ids(t: types_pb2.Task, node_id: str | None = None) -> dict[str, str]:
    return {"node_id": node_id if node_id is not None else t.node_id, "job_id": t.job_id, "task_id": t.id}
