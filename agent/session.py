"""The agent's one long-lived AgentService.Connect stream to the leader, kept alive through failovers.

Per connection: send Hello, wait (with a deadline) for Welcome, then run a
reader (DesiredTasks -> `on_desired`) and a writer (queued TaskEvents as they
happen, a Report every interval) side by side until the stream breaks.
A follower answers FAILED_PRECONDITION with a NotLeader detail: the session
goes straight to the named leader (a few hops at most, then it backs off).
Any other failure: exponential backoff with full jitter, then the next
configured controller, round robin. Events are only dropped from the queue
once written, so those raised while disconnected are delivered after the
next Hello (which itself carries the state of every task).
`disconnected_since` (monotonic) drives the agent's disconnect policy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import AgentConfig
from lepton import tls
from lepton.errors import NotLeader, from_rpc_error
from lepton.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("lepton.agent.session")

MAX_REDIRECTS = 3  # consecutive NotLeader hops before backing off (no leader yet, stale hints)
WRITE_TIMEOUT = 10.0  # a write stuck this long means the stream is dead
MAX_QUEUED_EVENTS = 10_000


class StreamClosed(Exception):
    """The controller ended the stream (leader stepped down, shutting down...)."""


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(max, initial * 2**attempt)]."""
    return rng.uniform(0, min(maximum, initial * (2 ** min(attempt, 30))))


class Session:
    def __init__(
        self,
        config: AgentConfig,
        make_hello: Callable[[], agent_pb2.Hello],
        make_report: Callable[[], agent_pb2.Report],
        on_desired: Callable[[agent_pb2.DesiredTasks], None],
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = config
        self._make_hello = make_hello
        self._make_report = make_report
        self._on_desired = on_desired
        self._clock = clock
        self._rng = rng or random.Random()
        self._events: collections.deque[agent_pb2.TaskEvent] = collections.deque(maxlen=MAX_QUEUED_EVENTS)
        self._wake = asyncio.Event()
        self.report_interval = config.report_interval
        self.disconnected_since: float | None = clock.monotonic()
        self.leader: str = ""
        self.connections = 0  # successful Welcomes, for tests and logs
        self.closing = False  # set by the owner right before it cancels run()

    def emit(self, event: agent_pb2.TaskEvent) -> None:
        self._events.append(event)
        self._wake.set()

    def trigger_report(self) -> None:
        """Send a report now (e.g. right after applying a desired set)."""
        self._wake.set()

    async def run(self) -> None:
        """Connects and reconnects forever; cancel to stop."""
        targets = list(self._cfg.controllers)
        nxt = 0
        failures = 0
        redirects = 0
        redirect_to = ""
        while True:
            if redirect_to:
                target = redirect_to
            else:
                target = targets[nxt % len(targets)]
                nxt += 1
            redirect_to = ""
            try:
                await self._connect_once(target)
                err_text = "stream closed by the controller"
            except NotLeader as e:
                if e.leader_api_address and e.leader_api_address != target and redirects < MAX_REDIRECTS:
                    redirects += 1
                    redirect_to = e.leader_api_address
                    log.info("%s is not the leader; following redirect to %s", target, redirect_to)
                    continue
                err_text = str(e)
            except (grpc.RpcError, StreamClosed, TimeoutError, OSError) as e:
                err_text = _describe(e)
            except Exception as e:  # a bug must cost a reconnect, never the agent
                if self.closing:
                    raise asyncio.CancelledError from e
                log.exception("unexpected error on the stream to %s", target)
                err_text = _describe(e)
            if self.closing:
                # Cancelled while a child of the stream's TaskGroup failed (a write
                # racing the cancel): the group raised that error, not CancelledError.
                # Swallowing it here would keep the agent from ever shutting down.
                # (Task.cancelling() is no guide: TaskGroup cancels its parent itself.)
                raise asyncio.CancelledError
            if self.disconnected_since is None:
                self.disconnected_since = self._clock.monotonic()
                failures = 0  # a stream that worked resets the backoff
            redirects = 0
            delay = backoff_delay(failures, self._cfg.backoff_initial, self._cfg.backoff_max, self._rng)
            failures += 1
            log.info("controller %s: %s; retrying in %.2fs", target, err_text, delay)
            await asyncio.sleep(delay)

    def channel_options(self) -> list[tuple[str, int]]:
        # A leader that vanishes without a FIN/RST (partition, power loss) must not
        # hold the agent forever. gRPC sets TCP_USER_TIMEOUT to keepalive_timeout_ms
        # once keepalive is configured, and reports are unacknowledged data every
        # interval, so the kernel drops a dead connection after peer_timeout. The
        # keepalive *ping* itself is hourly: servers by default punish pings more
        # frequent than every 5 minutes (GOAWAY too_many_pings).
        return [
            ("grpc.keepalive_time_ms", 3_600_000),
            ("grpc.keepalive_timeout_ms", int(self._cfg.peer_timeout * 1000)),
            # A node's desired set can exceed gRPC's default 4 MiB; the controller may send 64 MiB.
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]

    def _channel(self, target: str) -> grpc.aio.Channel:
        """TLS (with this agent's certificate) when configured, else plain text (docs/security.md)."""
        files = tls.TLSFiles(self._cfg.tls_cert, self._cfg.tls_key, self._cfg.tls_ca)
        if files.enabled:
            return grpc.aio.secure_channel(
                target, tls.channel_credentials(files), options=self.channel_options()
            )
        return grpc.aio.insecure_channel(target, options=self.channel_options())

    async def _connect_once(self, target: str) -> None:
        channel = self._channel(target)
        call = None
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            # The token is sent as metadata only; it is never logged.
            call = stub.Connect(
                metadata=(("authorization", f"Bearer {self._cfg.token}"),) if self._cfg.token else None
            )
            try:
                await asyncio.wait_for(
                    call.write(agent_pb2.AgentMessage(hello=self._make_hello())), self._cfg.connect_timeout
                )
                first = await asyncio.wait_for(call.read(), self._cfg.connect_timeout)
            except grpc.RpcError as e:
                raise _translate(e) from None
            if first is grpc.aio.EOF:
                raise StreamClosed("stream closed before Welcome")
            if not first.HasField("welcome"):
                raise StreamClosed(f"expected Welcome, got {first.WhichOneof('msg')}")
            w = first.welcome
            self.report_interval = (
                w.report_interval_ms / 1000 if w.report_interval_ms > 0 else self._cfg.report_interval
            )
            self.leader = target
            self.connections += 1
            self.disconnected_since = None
            log.info("connected to leader %s (%s, term %d)", target, w.controller_id or "?", w.term)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._reader(call))
                    tg.create_task(self._writer(call))
            except* grpc.RpcError as eg:
                raise _translate(eg.exceptions[0]) from None
            except* StreamClosed as eg:
                raise eg.exceptions[0] from None
            except* TimeoutError as eg:
                raise eg.exceptions[0] from None
            except* asyncio.InvalidStateError as eg:
                # grpc.aio raises this for a write racing the end of the RPC.
                code, details = await call.code(), await call.details()
                raise StreamClosed(f"stream ended: {code.name}: {details}") from eg.exceptions[0]
        finally:
            self.leader = ""
            if call is not None:
                call.cancel()
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def _reader(self, call) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise StreamClosed("stream closed by the controller")
            if msg.HasField("desired"):
                self._on_desired(msg.desired)
            # A second Welcome (e.g. new interval) is harmless; anything else is ignored.
            elif msg.HasField("welcome") and msg.welcome.report_interval_ms > 0:
                self.report_interval = msg.welcome.report_interval_ms / 1000

    async def _writer(self, call) -> None:
        # Events written before the first report: the controller learns of exits
        # that happened while we were disconnected right after Hello.
        next_report = self._clock.monotonic()
        while True:
            while self._events:
                await asyncio.wait_for(
                    call.write(agent_pb2.AgentMessage(task_event=self._events[0])), WRITE_TIMEOUT
                )
                self._events.popleft()
            now = self._clock.monotonic()
            if now >= next_report or self._wake.is_set():
                self._wake.clear()
                report = self._make_report()
                await asyncio.wait_for(call.write(agent_pb2.AgentMessage(report=report)), WRITE_TIMEOUT)
                next_report = now + self.report_interval
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_report - now))


def _translate(e: BaseException) -> BaseException:
    if isinstance(e, grpc.RpcError):
        err = from_rpc_error(e)
        if isinstance(err, NotLeader):
            return err
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
