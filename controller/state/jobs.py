"""Command handlers for jobs: SubmitJob and CancelJob.

Submission is idempotent by the client's request id (a retry after an
unknown outcome gets the first job back) and refuses a second active job
with the same name. Task ids are "<job_id>.<index>"; every task starts
PENDING at attempt 1.
"""

from __future__ import annotations

from lepton.errors import AlreadyExists, FailedPrecondition, NotFound
from lepton.v1 import commands_pb2, types_pb2

from . import validate
from .lifecycle import drop_target, finish
from .store import DESIRED, JOB_FINISHED, JS, TERMINAL, TS, ApplyContext, Store


def submit_job(store: Store, ctx: ApplyContext, body: commands_pb2.SubmitJob) -> types_pb2.Job:
    if ctx.request_id:
        first = store.request_ids.get(ctx.request_id)
        if first is not None and first in store.jobs:
            return store.jobs[first]
    validate.validate_submit(body, ctx.request_id)
    if body.job_id in store.jobs:
        raise AlreadyExists(f"job id {body.job_id!r} already exists")
    name = body.spec.name
    if name in store.active_names:
        raise AlreadyExists(f"a job named {name!r} is already active (id {store.active_names[name]})")
    job = types_pb2.Job(
        id=body.job_id,
        spec=body.spec,
        state=JS.JOB_STATE_PENDING,
        submitted_at_ms=ctx.time_ms,
        updated_at_ms=ctx.time_ms,
        request_id=ctx.request_id,
        submit_index=ctx.index,
    )
    store.jobs[job.id] = job
    store.active_names[name] = job.id
    if ctx.request_id:
        store.request_ids[ctx.request_id] = job.id
    store.job_counts[job.id] = {TS.TASK_STATE_PENDING: body.spec.count}
    tmpl = body.spec.template
    for i in range(body.spec.count):
        rec = commands_pb2.TaskRecord(next_attempt=2)
        t = rec.task
        t.id = f"{job.id}.{i}"
        t.job_id = job.id
        t.job_name = name
        t.index = i
        t.state = TS.TASK_STATE_PENDING
        t.attempt = 1
        t.reason = "waiting for placement"
        t.priority = body.spec.priority
        t.resources.CopyFrom(tmpl.resources)
        t.created_at_ms = ctx.time_ms
        t.updated_at_ms = ctx.time_ms
        store.tasks[t.id] = rec
    store.emit(ctx, "job.submitted", f"job {name} submitted with {body.spec.count} task(s)", job_id=job.id)
    return job


def cancel_job(store: Store, ctx: ApplyContext, body: commands_pb2.CancelJob) -> types_pb2.Job:
    validate.validate_text(body.reason, "reason")
    job = store.find_job(body.job_id)
    if job is None:
        raise NotFound(f"job {body.job_id!r} not found")
    if job.state == JS.JOB_STATE_CANCELLED:
        return job  # cancelling twice is a no-op, so retries are safe
    if job.state in JOB_FINISHED:
        raise FailedPrecondition(f"job {job.spec.name} already finished ({JS.Name(job.state)})")
    why = body.reason or "job cancelled"
    for tid in store.job_task_ids(job):
        rec = store.tasks[tid]
        t = rec.task
        if t.migrating_to:
            drop_target(store, ctx, rec)
        if t.state == TS.TASK_STATE_PENDING:
            finish(store, ctx, rec, TS.TASK_STATE_STOPPED, why)
        elif t.state in DESIRED:
            # Out of the node's desired set: the agent stops it and reports STOPPED.
            before = store.begin_change(rec)
            t.state = TS.TASK_STATE_STOPPING
            t.reason = why
            t.updated_at_ms = ctx.time_ms
            store.end_change(rec, before, ctx)
        elif t.state not in TERMINAL and t.state != TS.TASK_STATE_STOPPING:
            finish(store, ctx, rec, TS.TASK_STATE_STOPPED, why)
    job.state = JS.JOB_STATE_CANCELLED
    job.updated_at_ms = ctx.time_ms
    if store.active_names.get(job.spec.name) == job.id:
        del store.active_names[job.spec.name]
    store.emit(ctx, "job.cancelled", f"job {job.spec.name} cancelled: {why}", job_id=job.id)
    return job
