"""A scripted agent for controller tests: speaks AgentService.Connect without running anything.

Messages to send go into a queue that backs the request stream; what the
controller sends is read with `next(kind)`. Reports are sent by `report()`
(or periodically by `start_reporting()`), so a test decides exactly when a
node is alive.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from lepton.v1 import agent_pb2, types_pb2

GiB = 2**30
_END = object()


def hello(node_id: str, cpu=8000, mem=16 * GiB, net=1000, tasks=()) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(
            node_id=node_id,
            hostname=node_id,
            address="127.0.0.1",
            capacity=types_pb2.Resources(cpu_millis=cpu, memory_bytes=mem, network_mbps=net),
            tasks=list(tasks),
            agent_version="test",
        )
    )


class FakeAgent:
    def __init__(self, stub, node_id: str, **hello_kw) -> None:
        self.node_id = node_id
        self._out: asyncio.Queue = asyncio.Queue()
        self._out.put_nowait(hello(node_id, **hello_kw))
        self.call = stub.Connect(self._requests(), timeout=60)
        self._reporter: asyncio.Task | None = None
        self.cpu_millis = 100  # what periodic reports claim is busy
        self.cpu_millis = 100  # what periodic reports claim is busy

    async def _requests(self):
        while True:
            msg = await self._out.get()
            if msg is _END:
                return
            yield msg

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        self._out.put_nowait(msg)

    def report(self, cpu_millis: int | None = None) -> None:
        busy = self.cpu_millis if cpu_millis is None else cpu_millis
        usage = types_pb2.NodeUsage(cpu_millis=busy, memory_total_bytes=16 * GiB, memory_used_bytes=GiB)
        self.send(agent_pb2.AgentMessage(report=agent_pb2.Report(time_ms=1, usage=usage)))

    def event(self, task_id: str, attempt: int, type_: int, exit_code: int = 0) -> None:
        self.send(
            agent_pb2.AgentMessage(
                task_event=agent_pb2.TaskEvent(
                    task_id=task_id, attempt=attempt, type=type_, exit_code=exit_code
                )
            )
        )

    def start_reporting(self, interval: float = 0.1) -> None:
        async def loop():
            while True:
                self.report()
                await asyncio.sleep(interval)

        self._reporter = asyncio.create_task(loop())

    def stop_reporting(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None

    async def next(self, kind: str | None = None, timeout: float = 10.0) -> agent_pb2.ControllerMessage:  # noqa: ASYNC109
        """The next controller message (of `kind`, skipping others)."""
        while True:
            msg = await asyncio.wait_for(self.call.read(), timeout)
            if msg is grpc.aio.EOF:
                raise EOFError("stream ended")
            if kind is None or msg.WhichOneof("msg") == kind:
                return msg

    async def desired_until(self, predicate, timeout: float = 10.0) -> agent_pb2.DesiredTasks:  # noqa: ASYNC109
        """Reads desired sets until one satisfies predicate(desired)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            msg = await self.next("desired", timeout=max(0.01, end - loop.time()))
            if predicate(msg.desired):
                return msg.desired

    async def close(self) -> None:
        self.stop_reporting()
        self._out.put_nowait(_END)
        self.call.cancel()
        with contextlib.suppress(Exception):
            await self.call
