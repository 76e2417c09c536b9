"""ControlService (control.proto): the API of lepton-ctl and the Python client.

Thin by design: each RPC validates its input (InvalidArgument before anything
reaches Raft), then either proposes one command on the leader or reads the
replicated state (after a read_index barrier unless stale=true). All rules
live in ClusterState.apply and controller/state/validate.py. Every failure
leaves as a LeptonError mapped by lepton.errors.abort(); an unexpected bug
becomes INTERNAL with a log line, never a crashed process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets

import grpc

from controller import rebalancing
from controller.security import identity, limits
from controller.server import Malformed
from controller.state import validate
from lepton.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LeptonError, NotFound, abort
from lepton.v1 import commands_pb2, control_pb2, control_pb2_grpc, types_pb2

log = logging.getLogger("lepton.controller.api")

MAX_ID_LEN = 253
MAX_REQUEST_ID_LEN = 256
MAX_WATCH_TYPES = 64
MAX_DRAIN_DEADLINE_MS = 365 * 86_400_000
WATCH_POLL = 1.0
_ACTIVE_JOB = frozenset(
    {types_pb2.JOB_STATE_PENDING, types_pb2.JOB_STATE_RUNNING, types_pb2.JOB_STATE_UNSPECIFIED}
)  # follow-mode wake-up even without state changes, to notice a cancelled call


def rpc(fn):
    """Maps LeptonErrors to statuses and any other exception to INTERNAL (logged)."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            reject_malformed(request)
            return await fn(self, request, context)
        except LeptonError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see the controller log"
            )

    return wrapper


def reject_malformed(request) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument(request.message)


def new_job_id(now_ms: int) -> str:
    """Short, sortable-ish and unique: base-36 time plus random bits (made by the proposer, not apply)."""
    t, digits = now_ms, ""
    while t:
        t, d = divmod(t, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
    return f"j{digits}{secrets.token_hex(3)}"


def _check_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidArgument(f"{what} is longer than {MAX_ID_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"{what} contains control characters")
    return value


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, replica) -> None:
        self.r = replica

    # ---- helpers ----------------------------------------------------------

    def _node(self, node_id: str) -> types_pb2.Node:
        return self._decorate(self.r.state.node(node_id))  # raises NotFound

    def _decorate(self, n: types_pb2.Node) -> types_pb2.Node:
        """Adds the leader's soft state (live usage, last report, connected) to a node record."""
        out = types_pb2.Node()
        out.CopyFrom(n)
        live = self.r.sessions.live.get(n.id)
        if live is not None:
            out.usage.CopyFrom(live.usage)
            out.last_report_ms = live.last_report_ms
        out.connected = self.r.sessions.connected(n.id)
        return out

    def _job(self, id_or_name: str) -> types_pb2.Job:
        return self.r.state.job(id_or_name)  # raises NotFound

    def _explain(self, tasks: list[types_pb2.Task]) -> list[types_pb2.Task]:
        """Pending tasks get the leader's latest "cannot place" reason (soft state)."""
        unplaced = self.r.sessions.unplaced
        if unplaced:
            for t in tasks:
                why = unplaced.get(t.id)
                if why and t.state == types_pb2.TASK_STATE_PENDING:
                    t.reason = why
        return tasks

    def _job_detail(self, job: types_pb2.Job) -> control_pb2.JobDetail:
        return control_pb2.JobDetail(job=job, tasks=self._explain(self.r.state.tasks(job_id=job.id)))

    # ---- cluster ----------------------------------------------------------

    @rpc
    async def GetClusterStatus(self, request, context):
        await self.r.read(request.stale)
        node, state = self.r.node, self.r.state
        leader = node.leader_id
        registered = {m.id: m for m in state.members()}
        progress = node.peer_progress() if node.is_leader else {}
        members = []
        for mid, raft_addr in sorted(node.members().items()):
            m = registered.get(mid)
            p = progress.get(mid, {})
            members.append(
                control_pb2.Member(
                    id=mid,
                    api_address=self.r.member_api_address(mid) or (m.api_address if m else ""),
                    raft_address=m.raft_address if m is not None and raft_addr.endswith(":0") else raft_addr,
                    role="leader" if mid == leader else ("follower" if leader else "unknown"),
                    healthy=(mid == node.id) or bool(p.get("recent_active", False)),
                    match_index=int(p.get("match", 0)),
                )
            )
        counts = state.counts()
        # Read-only and on this replica: equal digests at equal indexes mean equal replicated states.
        digest, digest_index = (state.digest(), state.applied_index) if request.with_digest else ("", 0)
        return control_pb2.ClusterStatus(
            leader_id=leader,
            leader_api_address=self.r.member_api_address(leader),
            term=node.term,
            commit_index=node.commit_index,
            applied_index=node.applied_index,
            members=members,
            answered_by=node.id,
            nodes_total=counts["nodes_total"],
            nodes_ready=counts["nodes_ready"],
            jobs_total=counts["jobs_total"],
            tasks_by_state=counts["tasks_by_state"],
            state_digest=digest,
            state_digest_index=digest_index,
        )

    @rpc
    async def RegisterMember(self, request, context):
        _check_id(request.id, "member id")
        identity.check_register_member(request.id, context.peer())
        if request.id not in self.r.node.members():
            raise InvalidArgument(f"{request.id!r} is not a member of this cluster")
        for value, what in ((request.api_address, "api_address"), (request.raft_address, "raft_address")):
            if len(value) > MAX_ID_LEN or (value and ":" not in value):
                raise InvalidArgument(f"{what} must be HOST:PORT")
        self.r.require_leader()
        await self.r.propose(
            commands_pb2.RegisterMember(
                id=request.id, api_address=request.api_address, raft_address=request.raft_address
            )
        )
        return control_pb2.RegisterMemberResponse()

    # ---- nodes ------------------------------------------------------------

    @rpc
    async def ListNodes(self, request, context):
        await self.r.read(request.stale)
        return control_pb2.ListNodesResponse(nodes=[self._decorate(n) for n in self.r.state.nodes()])

    @rpc
    async def GetNode(self, request, context):
        _check_id(request.id, "node id")
        await self.r.read(request.stale)
        node = self._node(request.id)
        return control_pb2.NodeDetail(node=node, tasks=self.r.state.tasks(node_id=request.id))

    async def _node_write(self, node_id: str, body, needed=lambda node: True) -> types_pb2.Node:
        """Proposes `body` for an existing node unless `needed(node)` says it would change nothing."""
        _check_id(node_id, "node id")
        self.r.require_leader()
        node = self._node(node_id)  # NOT_FOUND before anything is proposed
        if not needed(node):
            return node  # idempotent: already so, nothing to commit
        await self.r.propose(body)
        self.r.sessions.capacity_changed.set()
        return self._node(node_id)

    @rpc
    async def CordonNode(self, request, context):
        return await self._node_write(
            request.id,
            commands_pb2.CordonNode(node_id=request.id, reason="cordoned by operator"),
            lambda n: not n.cordoned,
        )

    @rpc
    async def UncordonNode(self, request, context):
        return await self._node_write(
            request.id, commands_pb2.UncordonNode(node_id=request.id), lambda n: n.cordoned or n.draining
        )

    @rpc
    async def DrainNode(self, request, context):
        # The request's deadline is relative ("drain within 5 minutes"); the
        # command's is absolute on the leader clock, so apply stays clock-free.
        if request.deadline_ms < 0:
            raise InvalidArgument("drain deadline must not be negative")
        if request.deadline_ms > MAX_DRAIN_DEADLINE_MS:
            # now + deadline must fit the command's int64 (found by tests/test_fuzz_api.py).
            raise InvalidArgument(
                f"drain deadline must be at most {MAX_DRAIN_DEADLINE_MS // 86_400_000} days"
            )
        deadline = self.r.clock.now_ms() + request.deadline_ms if request.deadline_ms else 0
        body = commands_pb2.DrainNode(
            node_id=request.id,
            deadline_ms=deadline,
            max_parallel=request.max_parallel or self.r.cfg.drain_max_parallel,
            cancel=request.cancel,
        )
        _check_id(request.id, "node id")
        validate.validate_drain(body)

        def needed(node: types_pb2.Node) -> bool:
            if request.cancel and not node.draining:
                raise FailedPrecondition(f"node {node.id} is not draining")
            return True

        return await self._node_write(request.id, body, needed)

    # ---- jobs and tasks ---------------------------------------------------

    @rpc
    async def SubmitJob(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("request has no job spec")
        validate.validate_job_spec(request.spec)
        if len(request.request_id) > MAX_REQUEST_ID_LEN:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LEN} characters")
        self.r.require_leader()
        # Cheap checks against the leader's state first, so that the common
        # mistakes never reach the log (apply re-checks: this is not the guard).
        if request.request_id:
            earlier = self.r.state.job_for_request(request.request_id)
            if earlier is not None:
                return self._job_detail(earlier)
        try:
            same_name = self.r.state.job(request.spec.name)
        except NotFound:
            same_name = None
        if (
            same_name is not None
            and same_name.spec.name == request.spec.name
            and same_name.state in _ACTIVE_JOB
        ):
            raise AlreadyExists(
                f"a job named {request.spec.name!r} already exists ({same_name.id}); cancel it first"
            )
        limits.check_submit(self.r.state, request.spec.count)
        job_id = new_job_id(self.r.clock.now_ms())
        body = commands_pb2.SubmitJob(job_id=job_id, spec=request.spec)
        validate.validate_submit(body, request.request_id)
        result = await self.r.propose(body, request_id=request.request_id)
        # A retried request id answers with the job the first attempt created.
        if isinstance(result, types_pb2.Job):
            job_id = result.id
        elif isinstance(result, str) and result:
            job_id = result
        self.r.sessions.capacity_changed.set()
        return self._job_detail(self._job(job_id))

    @rpc
    async def GetJob(self, request, context):
        _check_id(request.id, "job id or name")
        await self.r.read(request.stale)
        return self._job_detail(self._job(request.id))

    @rpc
    async def ListJobs(self, request, context):
        await self.r.read(request.stale)
        return control_pb2.ListJobsResponse(jobs=self.r.state.jobs(include_finished=request.include_finished))

    @rpc
    async def CancelJob(self, request, context):
        _check_id(request.id, "job id or name")
        self.r.require_leader()
        job = self._job(request.id)
        if job.state == types_pb2.JOB_STATE_CANCELLED:
            return self._job_detail(job)  # cancelling twice is a no-op
        if job.state not in _ACTIVE_JOB:
            raise FailedPrecondition(
                f"job {job.spec.name} already finished ({types_pb2.JobState.Name(job.state)})"
            )
        await self.r.propose(commands_pb2.CancelJob(job_id=job.id, reason="cancelled by operator"))
        return self._job_detail(self._job(job.id))

    @rpc
    async def ListTasks(self, request, context):
        for value, what in ((request.job_id, "job id"), (request.node_id, "node id")):
            if value:
                _check_id(value, what)
        if request.state not in types_pb2.TaskState.values():
            raise InvalidArgument(f"unknown task state {request.state}")
        await self.r.read(request.stale)
        job_id = ""
        if request.job_id:
            job_id = self._job(request.job_id).id
        tasks = self._explain(self.r.state.tasks(job_id=job_id, node_id=request.node_id, state=request.state))
        return control_pb2.ListTasksResponse(tasks=tasks)

    # ---- rebalancing ------------------------------------------------------

    @rpc
    async def PlanRebalance(self, request, context):
        if request.max_moves < 0:
            raise InvalidArgument("max_moves must not be negative")
        self.r.require_leader()  # live utilisation exists only on the leader
        return rebalancing.plan_message(self.r, request.max_moves)

    @rpc
    async def ApplyRebalance(self, request, context):
        if request.max_moves < 0:
            raise InvalidArgument("max_moves must not be negative")
        self.r.require_leader()
        return await rebalancing.apply_plan(self.r, request.max_moves)

    # ---- events -----------------------------------------------------------

    async def WatchEvents(self, request, context):
        try:
            reject_malformed(request)
            if request.limit < 0:
                raise InvalidArgument("limit must not be negative")
            if len(request.types) > MAX_WATCH_TYPES or any(len(t) > MAX_ID_LEN for t in request.types):
                raise InvalidArgument(
                    f"at most {MAX_WATCH_TYPES} type prefixes of up to {MAX_ID_LEN} characters"
                )
            for value, what in ((request.node_id, "node id"), (request.job_id, "job id")):
                if value:
                    _check_id(value, what)
            await self.r.read(False)
        except LeptonError as e:
            await abort(context, e)
            return
        filters = dict(types=list(request.types), node_id=request.node_id, job_id=request.job_id)
        seq = request.since_seq
        backlog = self.r.state.events(since_seq=seq, limit=request.limit, **filters)
        for ev in backlog:
            seq = max(seq, ev.seq)
            yield ev
        if not request.follow:
            return
        sessions = self.r.sessions
        while not context.done():
            try:
                await asyncio.wait_for(sessions.changed.wait(), WATCH_POLL)
            except TimeoutError:
                pass
            for ev in self.r.state.events(since_seq=seq, **filters):
                seq = max(seq, ev.seq)
                yield ev

    # ---- backup -----------------------------------------------------------

    async def SaveSnapshot(self, request, context):
        """Header chunk, then the state (controller/backup.py): leader only, after a read barrier."""
        from controller import backup

        try:
            reject_malformed(request)
            async for chunk in backup.snapshot_chunks(self.r):
                yield chunk
        except LeptonError as e:
            await abort(context, e)
