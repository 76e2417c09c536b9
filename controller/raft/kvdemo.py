"""A replicated key-value map on RaftNode, and a process entry point for tests and the benchmark.

    python -m controller.raft.kvdemo --id c1 \\
        --peers c1=127.0.0.1:7101,c2=127.0.0.1:7102,c3=127.0.0.1:7103 \\
        --data-dir /tmp/c1 --listen 127.0.0.1:7201

`--peers` are the Raft addresses; `--listen` is where the KvDemo gRPC API
(raft.proto) is served: Put goes through Raft (a follower answers
FAILED_PRECONDITION with a NotLeader detail naming the leader's raft id),
PutStream does the same for many puts in flight on one stream (each its own
entry, each answered by id with its own status), Get does a read-index
barrier unless `stale` is set, Status reports the replica's view and the
driver's batching counters. Once serving, the process prints one line
``READY <api port> <raft port>`` to stdout, and it stops cleanly on SIGTERM
or SIGINT. Not part of the product: it is the smallest real state machine
that lets tests kill and restart real replica processes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import logging
import os
import signal
import struct
import sys
from pathlib import Path

import grpc

from lepton import aio
from lepton.errors import LeptonError, Unavailable, abort
from lepton.v1 import raft_pb2, raft_pb2_grpc

from .node import RaftConfig, RaftNode

_LEN = struct.Struct("<I")
_BATCH = 0xFFFFFFFF  # first word of a batch command (no key is 4 GiB long)


class KvStateMachine:
    """Commands: one put ``<u32 key length><key><value>``, or a batch ``<u32 0xFFFFFFFF><u32 n>``
    then n × ``<u32 key length><key><u32 value length><value>``. apply returns the entry's index."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    @staticmethod
    def encode_put(key: str, value: bytes) -> bytes:
        k = key.encode()
        return _LEN.pack(len(k)) + k + value

    @staticmethod
    def encode_put_many(items: list[tuple[str, bytes]]) -> bytes:
        parts = [_LEN.pack(_BATCH), _LEN.pack(len(items))]
        for k, v in items:
            kb = k.encode()
            parts += [_LEN.pack(len(kb)), kb, _LEN.pack(len(v)), v]
        return b"".join(parts)

    def apply(self, index: int, term: int, data: bytes) -> object:
        (n,) = _LEN.unpack_from(data)
        if n != _BATCH:
            self.data[data[4 : 4 + n].decode()] = data[4 + n :]
            return index
        (count,) = _LEN.unpack_from(data, 4)
        p = 8
        for _ in range(count):
            (kl,) = _LEN.unpack_from(data, p)
            k = data[p + 4 : p + 4 + kl].decode()
            p += 4 + kl
            (vl,) = _LEN.unpack_from(data, p)
            self.data[k] = data[p + 4 : p + 4 + vl]
            p += 4 + vl
        return index

    def snapshot(self) -> bytes:
        parts = [_LEN.pack(len(self.data))]
        for k, v in sorted(self.data.items()):
            kb = k.encode()
            parts += [_LEN.pack(len(kb)), kb, _LEN.pack(len(v)), v]
        return b"".join(parts)

    def restore(self, blob: bytes) -> None:
        data = {}
        if not blob:  # the empty state
            self.data = data
            return
        (count,) = _LEN.unpack_from(blob)
        p = 4
        for _ in range(count):
            (kl,) = _LEN.unpack_from(blob, p)
            k = blob[p + 4 : p + 4 + kl].decode()
            p += 4 + kl
            (vl,) = _LEN.unpack_from(blob, p)
            data[k] = blob[p + 4 : p + 4 + vl]
            p += 4 + vl
        self.data = data


class KvServicer(raft_pb2_grpc.KvDemoServicer):
    def __init__(self, node: RaftNode, sm: KvStateMachine) -> None:
        self.node = node
        self.sm = sm

    async def Put(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            index = await self.node.propose(KvStateMachine.encode_put(request.key, request.value))
        except LeptonError as e:
            await abort(context, e)
        return raft_pb2.KvPutResponse(index=index)

    async def PutMany(self, request, context):  # noqa: N802
        items = [(p.key, p.value) for p in request.puts]
        try:
            index = await self.node.propose(KvStateMachine.encode_put_many(items))
        except LeptonError as e:
            await abort(context, e)
        return raft_pb2.KvPutResponse(index=index)

    async def PutStream(self, request_iterator, context):  # noqa: N802
        # A reader takes requests off the stream and proposes each one without
        # waiting; results are written back as their entries apply. A deque and
        # an Event rather than an asyncio.Queue: this runs once per proposal.
        done: collections.deque = collections.deque()
        wake = asyncio.Event()
        outstanding = 0
        reading = True

        def finished(rid: int, fut: asyncio.Future) -> None:
            nonlocal outstanding
            outstanding -= 1
            if fut.cancelled():
                done.append(_stream_error(rid, Unavailable("the put was cancelled")))
            elif (e := fut.exception()) is not None:
                done.append(_stream_error(rid, e if isinstance(e, LeptonError) else Unavailable(str(e))))
            else:
                done.append(raft_pb2.KvStreamResult(id=rid, index=fut.result()))
            wake.set()

        async def read() -> None:
            nonlocal outstanding, reading
            try:
                async for req in request_iterator:
                    try:
                        fut = self.node.propose_nowait(KvStateMachine.encode_put(req.key, req.value))
                    except LeptonError as e:
                        done.append(_stream_error(req.id, e))
                        wake.set()
                        continue
                    outstanding += 1
                    fut.add_done_callback(functools.partial(finished, req.id))
            finally:
                reading = False
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                if done:
                    await context.write(done.popleft())
                    continue
                if not reading and not outstanding:
                    break
                wake.clear()
                if not done and (reading or outstanding):
                    await wake.wait()
        finally:
            reader.cancel()

    async def Get(self, request, context):  # noqa: N802
        if not request.stale:
            try:
                await self.node.read_index()
            except LeptonError as e:
                await abort(context, e)
        v = self.sm.data.get(request.key)
        return raft_pb2.KvGetResponse(found=v is not None, value=v or b"")

    async def Status(self, request, context):  # noqa: N802
        n = self.node
        return raft_pb2.KvStatusResponse(
            id=n.id,
            role=n.role,
            leader_id=n.leader_id,
            term=n.term,
            commit_index=n.commit_index,
            applied_index=n.applied_index,
            keys=len(self.sm.data),
            snapshot_index=n.snapshot_index,
            readies=n.stats["readies"],
            fsyncs=n.stats["fsyncs"],
            proposals=n.stats["proposals"],
        )


def _stream_error(rid: int, err: LeptonError) -> raft_pb2.KvStreamResult:
    return raft_pb2.KvStreamResult(
        id=rid,
        code=err.code.value[0],
        error=str(err),
        leader_id=getattr(err, "leader_id", ""),
    )


def parse_peers(text: str) -> dict[str, str]:
    peers = {}
    for part in text.split(","):
        if not part.strip():
            continue
        pid, sep, addr = part.partition("=")
        if not sep or not pid or ":" not in addr:
            raise ValueError(f"bad peer {part!r}: expected id=host:port")
        peers[pid.strip()] = addr.strip()
    if not peers:
        raise ValueError("--peers is empty")
    return peers


async def serve(args: argparse.Namespace) -> None:
    sm = KvStateMachine()
    cfg = RaftConfig(
        id=args.id,
        peers=parse_peers(args.peers),
        data_dir=Path(args.data_dir),
        tick_interval=args.tick,
        election_ticks=args.election_ticks,
        heartbeat_ticks=args.heartbeat_ticks,
        snapshot_entries=args.snapshot_entries,
        fsync=not args.no_fsync,
        cluster_id=args.cluster_id,
        wal_segment_bytes=args.segment_bytes,
        batch_linger=args.batch_linger,
    )
    node = RaftNode(cfg, sm)
    await node.start()
    server = grpc.aio.server()
    raft_pb2_grpc.add_KvDemoServicer_to_server(KvServicer(node, sm), server)
    port = server.add_insecure_port(args.listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port} {node.raft_port}", flush=True)
    await stop.wait()
    await server.stop(0.5)
    await node.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.raft.kvdemo", description=__doc__.split("\n")[0])
    ap.add_argument("--id", required=True)
    ap.add_argument("--peers", required=True, help="id=host:port,... raft addresses including this replica")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0", help="KvDemo API address (port 0: any)")
    ap.add_argument("--cluster-id", default="kvdemo")
    ap.add_argument("--tick", type=float, default=0.05, help="seconds per raft tick")
    ap.add_argument("--election-ticks", type=int, default=10)
    ap.add_argument("--heartbeat-ticks", type=int, default=2)
    ap.add_argument("--snapshot-entries", type=int, default=10_000)
    ap.add_argument("--segment-bytes", type=int, default=64 * 1024 * 1024)
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument(
        "--batch-linger",
        type=float,
        default=RaftConfig.batch_linger,
        help="seconds to wait for more proposals while others are in flight (0: never)",
    )
    ap.add_argument("--log-level", default="WARNING")
    ap.add_argument(
        "--event-loop",
        choices=aio.CHOICES,
        default=None,
        help=f"default: ${aio.ENV}, else auto (uvloop if installed)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        parse_peers(args.peers)
        if args.id not in parse_peers(args.peers):
            raise ValueError(f"--peers does not name this replica ({args.id})")
        aio.run(serve(args), loop=args.event_loop)
    except (ValueError, LeptonError, OSError) as e:
        print(f"kvdemo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- a harness that runs kvdemo replicas as OS processes (tests and bench/raft_bench.py) ----


class KvProcess:
    """One kvdemo replica process and a client stub to its API."""

    def __init__(self, node_id: str, raft_addr: str, data_dir: Path) -> None:
        self.id = node_id
        self.raft_addr = raft_addr
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{node_id}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: raft_pb2_grpc.KvDemoStub | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    """An ephemeral port that was free a moment ago (raft ports must be known before start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KvCluster:
    """Starts, kills and restarts kvdemo replicas on loopback; a client that follows the leader."""

    def __init__(self, base_dir: Path, ids=("c1", "c2", "c3"), extra_args: tuple[str, ...] = ()) -> None:
        self.base = Path(base_dir)
        self.extra_args = tuple(extra_args)
        self.replicas = {i: KvProcess(i, f"127.0.0.1:{free_port()}", self.base / i) for i in ids}
        self.peers_arg = ",".join(f"{r.id}={r.raft_addr}" for r in self.replicas.values())
        self._hint = ""

    async def start(self, node_id: str, log_level: str = "INFO") -> None:
        r = self.replicas[node_id]
        r.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "controller.raft.kvdemo", "--id", r.id, "--peers", self.peers_arg,
            "--data-dir", str(r.data_dir), "--listen", "127.0.0.1:0", "--log-level", log_level,
            *self.extra_args,
        ]  # fmt: skip
        logfd = os.open(r.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            r.proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=logfd)
        finally:
            os.close(logfd)
        try:
            line = await asyncio.wait_for(r.proc.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            await self.kill(node_id)
            raise RuntimeError(f"replica {node_id} did not start: {line!r}\n{r.log_text()[-3000:]}")
        api_port = int(line.split()[1])
        if r.channel is not None:
            await r.channel.close()
        r.channel = grpc.aio.insecure_channel(f"127.0.0.1:{api_port}")
        r.stub = raft_pb2_grpc.KvDemoStub(r.channel)

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(i) for i in self.replicas))

    async def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        r = self.replicas[node_id]
        if r.alive:
            r.proc.send_signal(sig)
            try:
                await asyncio.wait_for(r.proc.wait(), 20)
            except TimeoutError:
                r.proc.kill()
                await r.proc.wait()
        if r.channel is not None:
            await r.channel.close()
            r.channel = r.stub = None

    async def close(self) -> None:
        """Kills every replica this cluster started (only those PIDs) and closes channels."""
        for i in self.replicas:
            await self.kill(i)

    async def status(self, node_id: str) -> raft_pb2.KvStatusResponse | None:
        r = self.replicas[node_id]
        if not r.alive or r.stub is None:
            return None
        try:
            return await r.stub.Status(raft_pb2.KvStatusRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return None

    async def wait_leader(self, within: float = 20.0, exclude: tuple[str, ...] = ()) -> str:
        """Waits until a live replica reports itself leader; returns its id."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while loop.time() < end:
            for i in self.replicas:
                if i in exclude:
                    continue
                st = await self.status(i)
                if st is not None and st.role == "leader":
                    self._hint = i
                    return i
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no leader within {within}s")

    async def put(self, key: str, value: bytes, within: float = 20.0) -> int:
        """Writes through whichever replica leads, following NotLeader redirects; returns the index."""
        from lepton.errors import NotLeader, Unavailable, from_rpc_error

        loop = asyncio.get_running_loop()
        end = loop.time() + within
        ids = list(self.replicas)
        target = self._hint if self._hint in self.replicas else ids[0]
        while True:
            r = self.replicas[target]
            err: Exception | None = None
            if r.alive and r.stub is not None:
                try:
                    resp = await r.stub.Put(raft_pb2.KvPutRequest(key=key, value=value), timeout=5)
                    self._hint = target
                    return resp.index
                except grpc.aio.AioRpcError as e:
                    err = from_rpc_error(e)
                except asyncio.CancelledError:
                    # kill() closed the channel under this call: the replica is gone.
                    if asyncio.current_task().cancelling():
                        raise
                    err = Unavailable(f"replica {target} was stopped")
            if loop.time() > end:
                raise TimeoutError(f"put {key!r} not acknowledged within {within}s: {err}")
            if isinstance(err, NotLeader) and err.leader_id in self.replicas and err.leader_id != target:
                target = err.leader_id
                continue
            target = ids[(ids.index(target) + 1) % len(ids)]
            await asyncio.sleep(0.02)

    async def get(self, node_id: str, key: str, stale: bool = True) -> bytes | None:
        r = self.replicas[node_id]
        resp = await r.stub.Get(raft_pb2.KvGetRequest(key=key, stale=stale), timeout=5)
        return resp.value if resp.found else None
