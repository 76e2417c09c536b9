"""A minimal in-memory AgentService (a stand-in controller) for agent tests, the footprint benchmark and demos.

It speaks the real wire contract over real gRPC: records every Hello,
Report and TaskEvent, answers Hello with Welcome, and pushes the desired set
given to `set_desired()` to every connected agent. With `redirect_to` set it
behaves like a follower: it rejects Connect with FAILED_PRECONDITION and a
NotLeader detail naming that address. It is not a controller: no Raft, no
placement, no liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import grpc

from lepton.errors import NotLeader, abort
from lepton.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("lepton.agent.standin")


class StandInController(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, controller_id: str = "standin", redirect_to: str = "", report_interval_ms: int = 0
    ) -> None:
        self.controller_id = controller_id
        self.redirect_to = redirect_to
        self.report_interval_ms = report_interval_ms
        self.hellos: list[agent_pb2.Hello] = []
        self.reports: list[agent_pb2.Report] = []
        self.events: list[agent_pb2.TaskEvent] = []
        self.rejected = 0
        self.desired = agent_pb2.DesiredTasks()
        self._streams: set[asyncio.Queue] = set()
        self._changed = asyncio.Condition()
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"{host}:{port}")
        await self.server.start()
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace: float | None = 0.5) -> None:
        # End every stream explicitly first: grpc.aio's server.stop() alone was
        # seen to leave clients' streams open, which is not what a controller
        # going away looks like.
        for q in list(self._streams):
            q.put_nowait(None)
        for _ in range(100):
            if not self._streams:
                break
            await asyncio.sleep(0.01)
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    @property
    def connected(self) -> int:
        return len(self._streams)

    def set_desired(self, tasks: Iterable[agent_pb2.TaskAssignment], version: int | None = None) -> None:
        version = self.desired.version + 1 if version is None else version
        self.desired = agent_pb2.DesiredTasks(version=version, tasks=list(tasks))
        for q in self._streams:
            q.put_nowait(self.desired)

    async def _note(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], object], within: float = 30.0) -> object:
        """Waits until predicate() is truthy (re-checked on every message); TimeoutError otherwise."""

        async def loop():
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(loop(), within)

    async def Connect(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        if self.redirect_to:
            self.rejected += 1
            await self._note()
            await abort(context, NotLeader("leader", self.redirect_to, 1))
            return
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be Hello")
            return
        self.hellos.append(first.hello)
        await self._note()
        await context.write(
            agent_pb2.ControllerMessage(
                welcome=agent_pb2.Welcome(
                    controller_id=self.controller_id,
                    term=1,
                    report_interval_ms=self.report_interval_ms,
                    node_id=first.hello.node_id,
                )
            )
        )
        q: asyncio.Queue = asyncio.Queue()
        if self.desired.version:
            q.put_nowait(self.desired)
        self._streams.add(q)
        reader = asyncio.create_task(self._read(context))
        getter: asyncio.Task | None = None
        try:
            while not reader.done():
                getter = asyncio.create_task(q.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    desired = getter.result()
                    if desired is None:  # stop(): end the stream like a departing leader
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in controller stopping")
                    await context.write(agent_pb2.ControllerMessage(desired=desired))
                else:
                    getter.cancel()
            if reader.exception() is not None:
                log.warning("stand-in %s: stream reader failed: %r", self.controller_id, reader.exception())
        finally:
            self._streams.discard(q)
            if getter is not None:
                getter.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self._note()

    async def _read(self, context) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "report":
                self.reports.append(msg.report)
            elif kind == "task_event":
                self.events.append(msg.task_event)
            elif kind == "hello":
                self.hellos.append(msg.hello)
            await self._note()


def assignment(
    task_id: str,
    command: str,
    *args: str,
    attempt: int = 1,
    kill_timeout_ms: int = 0,
    stop_on_disconnect: bool = False,
    env: dict[str, str] | None = None,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
) -> agent_pb2.TaskAssignment:
    """A TaskAssignment with the fields tests usually set."""
    from lepton.v1 import types_pb2

    return agent_pb2.TaskAssignment(
        task_id=task_id,
        attempt=attempt,
        job_id=task_id.split(".")[0],
        template=types_pb2.TaskTemplate(
            command=command,
            args=list(args),
            env=env or {},
            kill_timeout_ms=kill_timeout_ms,
            stop_on_disconnect=stop_on_disconnect,
            resources=types_pb2.Resources(cpu_millis=cpu_millis, memory_bytes=memory_bytes),
        ),
    )
