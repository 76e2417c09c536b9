"""AgentService.Connect (agent.proto): one long-lived stream per node agent, on the leader.

A follower refuses the stream with FAILED_PRECONDITION + NotLeader detail.
On the leader the first message must be Hello: it is validated, proposed as
RegisterNode, answered with Welcome and immediately with the node's full
desired set. From then on the handler writes the desired set again whenever
a committed command changes it (sessions.py decides), while a reader task
consumes Reports (soft state: usage, last report time) and TaskEvents
(collected from all streams into TaskUpdates entries by TaskUpdateBatcher:
one entry per batch, updates in arrival order). When this replica stops
leading, the stream ends with NotLeader so the agent reconnects to the new
leader.

Task states the agent lists in Hello and Reports are also compared with the
replicated state: an event that was lost in a failover is then recovered
from the next report (level-triggered in both directions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from controller.control_service import reject_malformed
from controller.security import identity
from controller.server import Malformed
from controller.state import commands, validate
from lepton.errors import InvalidArgument, LeptonError, NotFound, NotLeader, abort
from lepton.v1 import agent_pb2, agent_pb2_grpc, commands_pb2, types_pb2

log = logging.getLogger("lepton.controller.agents")

HELLO_TIMEOUT = 10.0
RECONCILE_EVERY = 5  # reports
MAX_REMEMBERED = 10_000  # (task, attempt) states remembered per stream to skip repeats
TS = types_pb2.TaskState
_EVENT_STATE = {
    agent_pb2.TASK_EVENT_STARTED: TS.TASK_STATE_RUNNING,
    agent_pb2.TASK_EVENT_FAILED_TO_START: TS.TASK_STATE_FAILED,
    agent_pb2.TASK_EVENT_STOPPED: TS.TASK_STATE_STOPPED,
    agent_pb2.TASK_EVENT_RESTARTING: TS.TASK_STATE_STARTING,
}
_PLACED = frozenset({TS.TASK_STATE_ASSIGNED, TS.TASK_STATE_STARTING, TS.TASK_STATE_RUNNING})
_FINISHED = frozenset({TS.TASK_STATE_SUCCEEDED, TS.TASK_STATE_FAILED, TS.TASK_STATE_STOPPED})
# States an agent may report for a task; anything else in a report is ignored.
_REPORTABLE = frozenset(
    {
        TS.TASK_STATE_STARTING,
        TS.TASK_STATE_RUNNING,
        TS.TASK_STATE_SUCCEEDED,
        TS.TASK_STATE_FAILED,
        TS.TASK_STATE_STOPPED,
    }
)


def update_from_event(node_id: str, ev: agent_pb2.TaskEvent) -> commands_pb2.TaskUpdate | None:
    if ev.type == agent_pb2.TASK_EVENT_EXITED:
        state = TS.TASK_STATE_SUCCEEDED if ev.exit_code == 0 else TS.TASK_STATE_FAILED
    else:
        state = _EVENT_STATE.get(ev.type)
        if state is None:
            return None
    reason = ev.reason[: validate.MAX_TEXT_LEN]
    if not reason and ev.type == agent_pb2.TASK_EVENT_EXITED:
        reason = f"exited with code {ev.exit_code}"
    return commands_pb2.TaskUpdate(
        task_id=ev.task_id,
        attempt=ev.attempt,
        state=state,
        exit_code=ev.exit_code,
        reason=reason,
        node_id=node_id,
    )


class TaskUpdateBatcher:
    """Proposes the task updates of every agent stream as TaskUpdates entries, in arrival order.

    An update waits at most for the batch ahead of it: whatever arrived
    meanwhile goes out together as the next entry (up to MAX_BATCH), with at
    most IN_FLIGHT entries proposed and not yet applied. Arrival order is
    proposal order is log order, so the updates of one task apply in the order
    its agent sent them. A proposal that fails as a whole (this replica lost
    the lead, or the outcome is unknown) drops its updates: the agents' next
    reports are compared with the state and bring the missing ones back
    (_TaskTracker.reconcile), as after any failover.
    """

    MAX_BATCH = 256  # far below the 4 MiB message limit even with the longest reasons
    IN_FLIGHT = 2

    def __init__(self, replica) -> None:
        self.r = replica
        self._pending: list[tuple[commands_pb2.TaskUpdate, _TaskTracker]] = []
        self._flushing = 0
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def submit(self, upd: commands_pb2.TaskUpdate, tracker: _TaskTracker) -> None:
        self._pending.append((upd, tracker))
        if self._flushing < self.IN_FLIGHT:
            self._flushing += 1
            # Tasks start in creation order, so batches reach Raft in order.
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                body = commands_pb2.TaskUpdates(updates=[u for u, _ in batch])
                try:
                    results = await self.r.propose(body)
                except NotLeader:
                    # Nothing more will commit here; the agents reconnect to the new leader.
                    dropped, self._pending = batch + self._pending, []
                    for u, t in dropped:
                        t.forget(u)
                    return
                except LeptonError as e:
                    log.info("%d task updates not applied: %s", len(batch), e)
                    results = [e] * len(batch)
                for (u, t), err in zip(batch, results, strict=True):
                    if err is not None:
                        # Stale attempts and finished tasks are rejected by apply: expected after moves.
                        log.debug(
                            "task update %s/%d from %s not applied: %s", u.task_id, u.attempt, u.node_id, err
                        )
                        t.forget(u)
        finally:
            self._flushing -= 1


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, replica) -> None:
        self.r = replica
        self.batcher = TaskUpdateBatcher(replica)

    async def Connect(self, request_iterator, context):
        try:
            await self._connect(request_iterator, context)
        except LeptonError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("agent stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the controller log")

    async def _connect(self, request_iterator, context) -> None:
        r = self.r
        r.require_leader()
        it = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(it.__anext__(), HELLO_TIMEOUT)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InvalidArgument(f"no Hello within {HELLO_TIMEOUT:g}s") from None
        reject_malformed(first)
        if first.WhichOneof("msg") != "hello":
            raise InvalidArgument("the first message on an agent stream must be Hello")
        hello = first.hello
        body = commands.register_node_from_hello(hello)
        validate.validate_register_node(body)
        # Who may be this node: its agent token and its client certificate must say so.
        identity.check_agent_node(hello.node_id, context.peer())
        await r.propose(body)
        node_id = hello.node_id
        session = r.sessions.open(node_id)
        r.sessions.touch(node_id, r.clock.monotonic(), r.clock.now_ms())
        r.sessions.capacity_changed.set()
        log.info("agent %s connected (%s)", node_id, hello.hostname)
        await context.write(
            agent_pb2.ControllerMessage(
                welcome=agent_pb2.Welcome(
                    controller_id=r.id,
                    term=r.node.term,
                    report_interval_ms=int(r.cfg.report_interval * 1000),
                    node_id=node_id,
                )
            )
        )
        tracker = _TaskTracker(r, node_id, self.batcher)
        tracker.reconcile(hello.tasks)
        reader = asyncio.create_task(self._read(session, it, tracker), name=f"agent-read-{node_id}")
        try:
            while await session.wait_for_change():
                # desired_version is cheap and moves exactly when the set changes;
                # only then is the whole set built and compared.
                if (
                    session.sent_tasks is not None
                    and r.state.desired_version(node_id) == session.sent_version
                ):
                    continue
                version, tasks = r.state.desired_for_node(node_id)
                msg = session.due_desired(version, tasks)
                if msg is not None:
                    await context.write(agent_pb2.ControllerMessage(desired=msg))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            r.sessions.close(session)
            log.info("agent %s stream closed", node_id)
        if not r.is_leader:
            raise r.not_leader()

    async def _read(self, session, it, tracker: _TaskTracker) -> None:
        r = self.r
        reports = 0
        try:
            async for msg in it:
                if isinstance(msg, Malformed):
                    log.warning("agent %s sent a malformed message: %s", session.node_id, msg.message)
                    continue
                kind = msg.WhichOneof("msg")
                if kind == "report":
                    r.sessions.record_report(
                        session.node_id, msg.report, r.clock.monotonic(), r.clock.now_ms()
                    )
                    reports += 1
                    # Events carry task changes; the listed states are only a safety
                    # net, so they are compared every few reports, not on each.
                    if reports % RECONCILE_EVERY == 1:
                        tracker.reconcile(msg.report.task_states)
                elif kind == "task_event":
                    upd = update_from_event(session.node_id, msg.task_event)
                    if upd is not None and tracker.concerns_node(upd.task_id):
                        tracker.submit(upd)
                # A second Hello or an unknown kind (newer agent) is ignored.
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()


class _TaskTracker:
    """Decides which of one agent's task updates to propose; the batcher proposes them.

    It remembers what it last proposed per (task, attempt) so a state that
    reports repeat every second is proposed once, not once per report.
    """

    def __init__(self, replica, node_id: str, batcher: TaskUpdateBatcher) -> None:
        self.r = replica
        self.node_id = node_id
        self.batcher = batcher
        self._proposed: dict[tuple[str, int], int] = {}

    def concerns_node(self, task_id: str) -> bool:
        """Only events about tasks placed (or migrating) here are proposed.

        apply would ignore the rest anyway, but then only after they were
        committed: a confused or hostile agent must not fill the Raft log.
        """
        try:
            task = self.r.state.task(task_id)
        except (NotFound, LeptonError):
            return False
        return self.node_id in (task.node_id, task.migrating_to)

    def submit(self, upd: commands_pb2.TaskUpdate) -> None:
        key = (upd.task_id, upd.attempt)
        if self._proposed.get(key) == upd.state:
            return
        if len(self._proposed) >= MAX_REMEMBERED:
            # Only an optimisation against repeats: forgetting costs at most a no-op proposal.
            self._proposed.clear()
        self._proposed[key] = upd.state
        self.batcher.submit(upd, self)

    def forget(self, upd: commands_pb2.TaskUpdate) -> None:
        """The update did not apply: a later report of the same state is proposed again."""
        key = (upd.task_id, upd.attempt)
        if self._proposed.get(key) == upd.state:
            del self._proposed[key]

    def reconcile(self, running) -> None:
        """Proposes the agent's view of a task where the replicated state disagrees."""
        for rt in running:
            if rt.state not in _REPORTABLE or not rt.task_id:
                continue
            try:
                task = self.r.state.task(rt.task_id)
            except NotFound:
                continue
            # Only the main copy is reconciled; a migration target reports through events.
            if task.node_id != self.node_id or task.attempt != rt.attempt or task.state == rt.state:
                continue
            if task.state not in _PLACED:  # lost, pending or finished here: nothing to catch up on
                continue
            self.submit(
                commands_pb2.TaskUpdate(
                    task_id=rt.task_id,
                    attempt=rt.attempt,
                    state=rt.state,
                    exit_code=rt.exit_code,
                    reason=rt.reason[: validate.MAX_TEXT_LEN],
                    node_id=self.node_id,
                )
            )
        self._finish_stopping(running)

    def _finish_stopping(self, running) -> None:
        """Finishes STOPPING tasks of this node that the agent has stopped or never had.

        A task cancelled before its agent acted on the desired set that held
        it (the agent skipped that version, or was disconnected meanwhile) is
        STOPPING, but the agent has nothing to stop and so never reports: it
        would hold its reservation for ever. `running` lists every task the
        agent has (Hello, and every report), so one it does not list is not
        running there. If the agent starts it from an older set after all,
        the newer set (without it) stops it again; only the release of the
        reservation comes a moment early. A stop the agent reported but whose
        event was lost in a failover is recovered here too.
        """
        listed = {(rt.task_id, rt.attempt): rt for rt in running}
        for task_id, attempt in self.r.state.stopping_on_node(self.node_id):
            rt = listed.get((task_id, attempt))
            if rt is not None and rt.state not in _FINISHED:
                continue  # still running or being stopped there: its own event finishes it
            exit_code, reason = (
                (rt.exit_code, rt.reason) if rt is not None else (-1, "not running on the agent")
            )
            self.submit(
                commands_pb2.TaskUpdate(
                    task_id=task_id,
                    attempt=attempt,
                    state=TS.TASK_STATE_STOPPED,
                    exit_code=exit_code,
                    reason=reason[: validate.MAX_TEXT_LEN],
                    node_id=self.node_id,
                )
            )
