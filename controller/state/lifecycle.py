"""Task and job lifecycle rules shared by the command handlers.

The transitions that more than one command needs live here: sending a task
back to pending with a fresh attempt (restart, lost node, preemption,
stop-then-start migration), finishing it, promoting a migration's target
copy, the restart policy, and the derivation of a job's state from its
tasks. All of them run inside apply and take their time from the context.
"""

from __future__ import annotations

from lepton.v1 import commands_pb2, types_pb2

from .store import JOB_FINISHED, JS, TERMINAL, TS, ApplyContext, Store, job_state_name

RM = types_pb2.RestartMode

DEFAULT_ON_FAILURE_MAX_RESTARTS = 3


def is_service(job: types_pb2.Job) -> bool:
    return job.spec.type != types_pb2.JOB_TYPE_BATCH


def should_restart(job: types_pb2.Job, restarts: int, success: bool) -> bool:
    """The restart policy. UNSPECIFIED = ALWAYS for services, ON_FAILURE for batch.

    max_restarts 0 means unlimited for ALWAYS and 3 for ON_FAILURE.
    """
    policy = job.spec.template.restart
    mode = policy.mode
    if mode == RM.RESTART_MODE_UNSPECIFIED:
        mode = RM.RESTART_MODE_ALWAYS if is_service(job) else RM.RESTART_MODE_ON_FAILURE
    if mode == RM.RESTART_MODE_NEVER:
        return False
    if mode == RM.RESTART_MODE_ON_FAILURE:
        limit = policy.max_restarts or DEFAULT_ON_FAILURE_MAX_RESTARTS
        return not success and restarts < limit
    # ALWAYS
    return policy.max_restarts == 0 or restarts < policy.max_restarts


def requeue(store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, reason: str) -> None:
    """Back to PENDING with a new attempt, so reports about the old copy are recognised as stale."""
    before = store.begin_change(rec)
    t = rec.task
    if t.node_id:
        t.previous_node_id = t.node_id
    t.node_id = ""
    t.state = TS.TASK_STATE_PENDING
    t.attempt = rec.next_attempt
    rec.next_attempt += 1
    t.reason = reason
    t.updated_at_ms = ctx.time_ms
    store.end_change(rec, before, ctx)
    ctx.jobs_changed.add(t.job_id)


def finish(
    store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, state: int, reason: str, exit_code: int = 0
) -> None:
    """Into a terminal state (SUCCEEDED, FAILED, STOPPED)."""
    before = store.begin_change(rec)
    t = rec.task
    t.state = state
    t.reason = reason
    t.exit_code = exit_code
    t.finished_at_ms = ctx.time_ms
    t.updated_at_ms = ctx.time_ms
    t.migrating_to = ""
    rec.migration_attempt = 0
    rec.migration_state = TS.TASK_STATE_UNSPECIFIED
    store.end_change(rec, before, ctx)
    ctx.jobs_changed.add(t.job_id)


def promote_target(store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord, state: int) -> str:
    """The migration's target copy becomes the task; returns the node it left."""
    before = store.begin_change(rec)
    t = rec.task
    source = t.node_id
    t.previous_node_id = source
    t.node_id = t.migrating_to
    t.attempt = rec.migration_attempt
    t.state = state
    if state == TS.TASK_STATE_RUNNING:
        t.started_at_ms = ctx.time_ms
    t.migrating_to = ""
    t.updated_at_ms = ctx.time_ms
    rec.migration_attempt = 0
    rec.migration_state = TS.TASK_STATE_UNSPECIFIED
    store.end_change(rec, before, ctx)
    ctx.jobs_changed.add(t.job_id)
    return source


def drop_target(store: Store, ctx: ApplyContext, rec: commands_pb2.TaskRecord) -> str:
    """Abandons an in-flight migration (the old copy keeps running); returns the target node."""
    before = store.begin_change(rec)
    t = rec.task
    target = t.migrating_to
    t.migrating_to = ""
    t.updated_at_ms = ctx.time_ms
    rec.migration_attempt = 0
    rec.migration_state = TS.TASK_STATE_UNSPECIFIED
    store.end_change(rec, before, ctx)
    return target


def derive_job_state(store: Store, job: types_pb2.Job) -> int:
    if job.state == JS.JOB_STATE_CANCELLED:
        return job.state
    counts = store.job_counts[job.id]
    total = job.spec.count
    if sum(counts.get(s, 0) for s in TERMINAL) == total:
        return (
            JS.JOB_STATE_COMPLETE if counts.get(TS.TASK_STATE_SUCCEEDED, 0) == total else JS.JOB_STATE_FAILED
        )
    started = counts.get(TS.TASK_STATE_PENDING, 0) + counts.get(TS.TASK_STATE_ASSIGNED, 0) < total
    # Once any task has started the job stays RUNNING, also while tasks restart.
    if job.state == JS.JOB_STATE_PENDING and not started:
        return JS.JOB_STATE_PENDING
    return JS.JOB_STATE_RUNNING


def refresh_jobs(store: Store, ctx: ApplyContext) -> None:
    """Re-derives the state of jobs touched by this command (sorted: events stay deterministic)."""
    for jid in sorted(ctx.jobs_changed):
        job = store.jobs.get(jid)
        if job is None or job.state in JOB_FINISHED:
            continue
        new = derive_job_state(store, job)
        if new == job.state:
            continue
        job.state = new
        job.updated_at_ms = ctx.time_ms
        if new in JOB_FINISHED:
            if store.active_names.get(job.spec.name) == jid:
                del store.active_names[job.spec.name]
            kind = "completed" if new == JS.JOB_STATE_COMPLETE else "failed"
            store.emit(ctx, f"job.{kind}", f"job {job.spec.name} {job_state_name(new)}", job_id=jid)
