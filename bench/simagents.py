"""Shared pieces of the end-to-end benches: real controllers on loopback and a fleet of simulated agents.

`Cluster` starts N real `lepton-controller` processes (python -m
controller.main) with default liveness settings on OS-assigned loopback
ports, and stops exactly those PIDs. `Fleet` is a load generator: many
AgentService.Connect streams from one asyncio process (grpc.aio), each doing
what a real agent does on the wire and nothing else: Hello, then a Report
every interval with jitter (time_ms stamped at send), and, when told to, a
TaskEvent STARTED for every new assignment in a DesiredTasks (no processes).

Run as a script it is the load-generator process the benches start:

    python bench/simagents.py --controllers ADDR --agents 1000 [--prefix sim] [--ack]

It prints one JSON line of cumulative counters per second on stdout and exits
when its stdin closes (so it never outlives the bench that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from lepton.errors import NotLeader, from_rpc_error
from lepton.v1 import agent_pb2, agent_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
TS = types_pb2.TaskState


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- real controller processes ---------------------------------------------------


class Cluster:
    """N controller replicas on loopback, default settings unless `extra` says otherwise."""

    def __init__(
        self, n: int = 3, extra: list[str] | None = None, metrics: bool = False, log_level: str = "WARNING"
    ) -> None:
        self.log_level = log_level
        self.root = Path(tempfile.mkdtemp(prefix="lepton-bench-"))
        self.ids = [f"c{i + 1}" for i in range(n)]
        self.raft = {rid: f"127.0.0.1:{free_port()}" for rid in self.ids}
        self.api = {rid: f"127.0.0.1:{free_port()}" for rid in self.ids}
        self.metrics = {rid: f"127.0.0.1:{free_port()}" for rid in self.ids} if metrics else {}
        self.extra = list(extra or [])
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def api_addresses(self) -> list[str]:
        return list(self.api.values())

    def start(self) -> None:
        peers = ",".join(f"{k}={v}" for k, v in self.raft.items())
        for rid in self.ids:
            argv = [
                sys.executable,
                "-m",
                "controller.main",
                "--id",
                rid,
                "--listen",
                self.api[rid],
                "--raft-listen",
                self.raft[rid],
                "--peers",
                peers,
                "--data-dir",
                str(self.root / rid),
                "--log-level",
                self.log_level,
                *self.extra,
            ]
            if self.metrics:
                argv += ["--metrics-listen", self.metrics[rid]]
            with open(self.root / f"{rid}.log", "ab") as log:
                self.procs[rid] = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
                )

    def leader(self, timeout: float = 30.0) -> tuple[str, str]:
        """(leader id, its API address) once a leader has announced itself."""
        from lepton.client import LeptonClient

        end = time.monotonic() + timeout
        with LeptonClient(self.api_addresses, timeout=2) as c:
            while time.monotonic() < end:
                with contextlib.suppress(Exception):
                    st = c.cluster_status()
                    if st.leader_id and st.leader_api_address:
                        return st.leader_id, st.leader_api_address
                time.sleep(0.2)
        raise TimeoutError(f"no leader within {timeout:g}s; logs in {self.root}")

    def pid(self, rid: str) -> int:
        return self.procs[rid].pid

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        # Raft data can be large after a big run; the logs (small) stay for a look afterwards.
        for rid in self.ids:
            shutil.rmtree(self.root / rid, ignore_errors=True)


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) raises SystemExit, so the benches' finally blocks stop their processes.

    Python's default is to die at once, which left three controllers running.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def kill_processes_with_env(prefix: str) -> int:
    """SIGKILLs processes (and their groups) with an environment entry starting with `prefix`.

    Task processes run in their own sessions and outlive a killed agent; the
    benches find them by the LEPTON_TASK_DIR the agent gave them.
    """
    marker = prefix.encode()
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if any(e.startswith(marker) for e in f.read().split(b"\0")):
                    with contextlib.suppress(OSError):
                        os.killpg(int(entry), signal.SIGKILL)
                    with contextlib.suppress(OSError):
                        os.kill(int(entry), signal.SIGKILL)
                    killed += 1
        except OSError:
            continue
    return killed


# --- simulated agents --------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.hellos = 0
        self.reports = 0
        self.events = 0
        self.desired = 0
        self.assigned = 0
        self.errors = 0
        self.late_sends = 0  # reports sent more than 100 ms after their scheduled time
        self.max_late_ms = 0.0
        self.error_kinds: dict[str, int] = {}  # status code (or exception type) -> count
        self.error_samples: list[str] = []

    def as_dict(self) -> dict:
        return dict(self.__dict__, t=time.time())


class Fleet:
    """`n` simulated agents on `channels` HTTP/2 connections to one controller.

    Real agents have one connection each; sharing a connection among ~100
    streams keeps this process's file descriptors and threads bounded while
    still spreading the load over many connections.
    """

    def __init__(
        self,
        address: str,
        n: int,
        prefix: str = "sim",
        interval: float = 1.0,
        ack: bool = False,
        cpus: int = 64,
        memory_gib: int = 256,
        per_channel: int = 100,
    ) -> None:
        # The first address is the leader; the others are where to look when it
        # stops leading (a NotLeader naming the new leader wins over the list).
        self.addresses = [a for a in address.split(",") if a]
        self.n = n
        self.prefix = prefix
        self.interval = interval
        self.ack = ack
        self.capacity = types_pb2.Resources(
            cpu_millis=cpus * 1000, memory_bytes=memory_gib * 2**30, network_mbps=10_000
        )
        self.per_channel = per_channel
        self.stats = Stats()
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self.leader_changes = 0

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        for i in range(self.n):
            tasks.append(asyncio.create_task(self._agent(i, stop)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)  # a connection storm is not what this measures
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in self._channels.values():
            await ch.close(None)

    def _stub(self, address: str, i: int) -> agent_pb2_grpc.AgentServiceStub:
        key = (address, i // self.per_channel)
        ch = self._channels.get(key)
        if ch is None:
            # A local subchannel pool per channel: otherwise grpc shares one TCP
            # connection among all channels to the same target.
            ch = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            self._channels[key] = ch
        return agent_pb2_grpc.AgentServiceStub(ch)

    async def _agent(self, i: int, stop: asyncio.Event) -> None:
        node_id = f"{self.prefix}-{i:05d}"
        loop = asyncio.get_running_loop()
        target = self.addresses[0]
        while not stop.is_set():
            running: dict[tuple[str, int], int] = {}
            call = self._stub(target, i).Connect()
            lock = asyncio.Lock()
            reader = None
            try:
                hello = agent_pb2.Hello(
                    node_id=node_id,
                    hostname=node_id,
                    address="127.0.0.1",
                    capacity=self.capacity,
                    labels={"sim": "true"},
                    agent_version="simagent",
                )
                await call.write(agent_pb2.AgentMessage(hello=hello))
                first = await call.read()
                if first is grpc.aio.EOF or not first.HasField("welcome"):
                    raise ConnectionError("no Welcome")
                self.stats.connected += 1
                self.stats.hellos += 1
                reader = asyncio.create_task(self._read(call, lock, running))
                due = loop.time() + random.uniform(0, self.interval)  # spread the fleet over the second
                while not reader.done():
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    late = loop.time() - due
                    if late > 0.1:
                        self.stats.late_sends += 1
                    self.stats.max_late_ms = max(self.stats.max_late_ms, late * 1000)
                    # Each agent keeps its own period, with the ±5 % jitter real clocks and
                    # sampling add, so the fleet does not lock into one phase.
                    due = max(due + self.interval * random.uniform(0.95, 1.05), loop.time())
                    report = agent_pb2.Report(
                        time_ms=int(time.time() * 1000),
                        usage=types_pb2.NodeUsage(cpu_millis=500, memory_used_bytes=2**30),
                        task_states=[
                            agent_pb2.RunningTask(task_id=t, attempt=a, state=s)
                            for (t, a), s in running.items()
                        ],
                    )
                    async with lock:
                        await call.write(agent_pb2.AgentMessage(report=report))
                    self.stats.reports += 1
                if reader.exception() is not None:
                    raise reader.exception()
                raise ConnectionError("stream ended by the controller")
            except (grpc.RpcError, ConnectionError, asyncio.InvalidStateError) as e:
                self.stats.errors += 1
                kind = e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__
                # Like a real agent: follow a NotLeader to the leader it names, else
                # try the next controller.
                nl = from_rpc_error(e) if isinstance(e, grpc.RpcError) else None
                if isinstance(nl, NotLeader) and nl.leader_api_address:
                    if nl.leader_api_address != target:
                        self.leader_changes += 1
                    target = nl.leader_api_address
                elif len(self.addresses) > 1 and kind in ("FAILED_PRECONDITION", "UNAVAILABLE"):
                    target = (
                        self.addresses[(self.addresses.index(target) + 1) % len(self.addresses)]
                        if target in self.addresses
                        else self.addresses[0]
                    )
                self.stats.error_kinds[kind] = self.stats.error_kinds.get(kind, 0) + 1
                if len(self.stats.error_samples) < 5:
                    detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
                    self.stats.error_samples.append(f"{kind}: {detail}"[:200])
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                if reader is not None:
                    reader.cancel()
                    self.stats.connected -= 1
            call.cancel()
            if not stop.is_set():
                await asyncio.sleep(random.uniform(0.5, 1.5))

    async def _read(self, call, lock: asyncio.Lock, running: dict) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            if not msg.HasField("desired"):
                continue
            self.stats.desired += 1
            wanted = {(a.task_id, a.attempt) for a in msg.desired.tasks}
            new = [k for k in wanted if k not in running]
            gone = [k for k in running if k not in wanted]
            for k in gone:
                del running[k]
            for k in new:
                running[k] = TS.TASK_STATE_RUNNING
            self.stats.assigned += len(new)
            if not self.ack:
                continue
            now = int(time.time() * 1000)
            events = [(k, agent_pb2.TASK_EVENT_STARTED) for k in new]
            events += [(k, agent_pb2.TASK_EVENT_STOPPED) for k in gone]
            for (task_id, attempt), kind in events:
                ev = agent_pb2.TaskEvent(task_id=task_id, attempt=attempt, type=kind, time_ms=now, pid=1)
                # The lock is taken per message (asyncio.Lock is FIFO), so a report due in
                # the middle of a burst of 100 events goes out after one of them, as it
                # would from a real agent, rather than after all of them: each write
                # costs a turn of this process's busy event loop.
                async with lock:
                    await call.write(agent_pb2.AgentMessage(task_event=ev))
                self.stats.events += 1


class LoadGenerator:
    """A `python bench/simagents.py` child process; `latest` holds its last counters line."""

    def __init__(self, address: str, agents: int, prefix: str, ack: bool = False, interval: float = 1.0):
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--controllers",
            address,
            "--agents",
            str(agents),
            "--prefix",
            prefix,
            "--interval",
            str(interval),
        ]
        if ack:
            argv.append("--ack")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True, start_new_session=True
        )
        self.latest: dict = {}
        self._reader = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start_reading(self) -> None:
        import threading

        def pump():
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    self.latest = json.loads(line)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the generator exits when its stdin closes
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _serve(args) -> None:
    fleet = Fleet(args.controllers, args.agents, args.prefix, args.interval, args.ack)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report():
        while not stop.is_set():
            print(json.dumps(dict(fleet.stats.as_dict(), leader_changes=fleet.leader_changes)), flush=True)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    await fleet.run(stop)
    reporter.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controllers", required=True, help="the leader's API address first, then the others")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--prefix", default="sim")
    ap.add_argument("--interval", type=float, default=1.0, help="report period in seconds")
    ap.add_argument("--ack", action="store_true", help="answer new assignments with TaskEvent STARTED")
    args = ap.parse_args()
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
