"""Raft benchmark: Lepton's Raft (3 kvdemo processes) beside etcd 3.4 (3 members), both on loopback, fsync on.

Prints, for each system: sequential commits from one client (commits/s, p50
and p99 latency), commits/s with 64 concurrent proposers (each with one put
in flight, each put its own Raft entry / etcd revision: once with a unary
call per put on both systems, and for Lepton once more with a PutStream per
proposer, since that is how a Python server avoids paying a whole gRPC call
per proposal; etcd's API has no streaming put), writes/s when each
proposal carries a batch of writes (the shape of Lepton's control-plane
work: one placement round commits all its assignments as one entry; for
etcd one transaction of puts), and leader SIGKILL
-> new leader elected and a write committed (p50 and max over the trials);
then Lepton/etcd ratios. Both are driven by the same Python gRPC (asyncio)
client on the same event loop (--client-loop; uvloop when installed), so
client overhead is the same on both sides for the same call shape; etcd is reached through
its real gRPC API (etcdserverpb.KV/Put, Maintenance/Status) with message
classes built here from descriptors (field numbers as in etcd's rpc.proto),
so no etcd Python package is needed. Not a test: it prints figures.

    python bench/raft_bench.py [--seq 500] [--conc-total 4000] [--stream-total 19200] [--trials 10] [--skip-etcd]

etcd comes from Debian's `etcd-server` package (apt-get install -y
etcd-server etcd-client); when the `etcd` binary is missing the etcd half is
skipped with a note. Every process started here is killed before exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The client spawns the replicas from its event loop; with uvloop that is a
# plain fork(), and gRPC's fork handlers would log a line for each one.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.raft.kvdemo import KvCluster, free_port  # noqa: E402
from lepton import aio  # noqa: E402
from lepton.v1 import raft_pb2  # noqa: E402

VALUE = b"v" * 100


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# ---- the drivers: put(key) against the current leader, who-leads, kill/restart ----


class LeptonSystem:
    name = "lepton"

    def __init__(self, base: Path) -> None:
        self.c = KvCluster(base / "lepton")

    async def start(self) -> None:
        await self.c.start_all()
        await self.leader()

    async def leader(self, exclude: tuple[str, ...] = ()) -> str:
        return await self.c.wait_leader(within=30, exclude=exclude)

    def putter(self, node: str):
        stub = self.c.replicas[node].stub

        async def put(key: str) -> None:
            await stub.Put(raft_pb2.KvPutRequest(key=key, value=VALUE), timeout=10)

        return put

    def stream_putter(self, node: str):
        """A proposer with its own PutStream: one put in flight at a time, each its own entry."""
        stub = self.c.replicas[node].stub
        call = None
        seq = 0

        async def put(key: str) -> None:
            nonlocal call, seq
            if call is None:
                call = stub.PutStream(timeout=60)
            seq += 1
            await call.write(raft_pb2.KvStreamPut(id=seq, key=key, value=VALUE))
            res = await call.read()
            if res is grpc.aio.EOF or res.id != seq or res.code != 0:
                raise RuntimeError(f"stream put {key} failed: {res}")

        async def close() -> None:
            if call is not None:
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:  # until the server ends the call
                    pass

        put.close = close  # type: ignore[attr-defined]
        return put

    def batch_putter(self, node: str):
        stub = self.c.replicas[node].stub

        async def put_many(keys: list[str]) -> None:
            req = raft_pb2.KvPutManyRequest(puts=[raft_pb2.KvPutRequest(key=k, value=VALUE) for k in keys])
            await stub.PutMany(req, timeout=10)

        return put_many

    async def put_anywhere(self, key: str) -> None:
        await self.c.put(key, VALUE, within=30)

    async def stats(self, node: str):
        return await self.c.status(node)

    async def kill(self, node: str) -> None:
        await self.c.kill(node, signal.SIGKILL)

    async def restart(self, node: str) -> None:
        await self.c.start(node, log_level="WARNING")

    async def caught_up(self, node: str) -> None:
        leader = await self.leader()
        target = (await self.c.status(leader)).commit_index
        while True:
            st = await self.c.status(node)
            if st is not None and st.applied_index >= target:
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.c.close()


def _etcd_messages():
    """PutRequest/PutResponse/StatusRequest/StatusResponse with etcd's field numbers."""
    f = descriptor_pb2.FileDescriptorProto(
        name="lepton_bench_etcd.proto", package="etcdserverpb", syntax="proto3"
    )
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, num, ftype, tname in fields:
            fd = m.field.add(name=fname, number=num, type=ftype, label=T.LABEL_OPTIONAL)
            if tname:
                fd.type_name = tname

    msg(
        "ResponseHeader",
        ("cluster_id", 1, T.TYPE_UINT64, None),
        ("member_id", 2, T.TYPE_UINT64, None),
        ("revision", 3, T.TYPE_INT64, None),
        ("raft_term", 4, T.TYPE_UINT64, None),
    )
    msg("PutRequest", ("key", 1, T.TYPE_BYTES, None), ("value", 2, T.TYPE_BYTES, None))
    msg("PutResponse", ("header", 1, T.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader"))
    msg("RequestOp", ("request_put", 2, T.TYPE_MESSAGE, ".etcdserverpb.PutRequest"))
    msg("TxnRequest", ("success", 2, T.TYPE_MESSAGE, ".etcdserverpb.RequestOp"))
    f.message_type[-1].field[0].label = T.LABEL_REPEATED
    msg(
        "TxnResponse",
        ("header", 1, T.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader"),
        ("succeeded", 2, T.TYPE_BOOL, None),
    )
    msg("StatusRequest")
    msg(
        "StatusResponse",
        ("header", 1, T.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader"),
        ("version", 2, T.TYPE_STRING, None),
        ("leader", 4, T.TYPE_UINT64, None),
        ("raftIndex", 5, T.TYPE_UINT64, None),
        ("raftTerm", 6, T.TYPE_UINT64, None),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{n}"))  # noqa: E731
    return (
        get("PutRequest"),
        get("PutResponse"),
        get("StatusRequest"),
        get("StatusResponse"),
        get("RequestOp"),
        get("TxnRequest"),
        get("TxnResponse"),
    )


class EtcdSystem:
    name = "etcd"

    def __init__(self, base: Path) -> None:
        self.base = base / "etcd"
        self.ids = ["e1", "e2", "e3"]
        self.client = {i: free_port() for i in self.ids}
        self.peer = {i: free_port() for i in self.ids}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.channels: dict[str, grpc.aio.Channel] = {}
        (self.PutReq, self.PutResp, self.StReq, self.StResp, self.Op, self.TxnReq, self.TxnResp) = (
            _etcd_messages()
        )
        self.member_of: dict[int, str] = {}

    def _args(self, i: str) -> list[str]:
        cluster = ",".join(f"{j}=http://127.0.0.1:{self.peer[j]}" for j in self.ids)
        return [
            "etcd", "--name", i, "--data-dir", str(self.base / i),
            "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-cluster", cluster, "--initial-cluster-token", "lepton-bench",
            "--initial-cluster-state", "new", "--log-level", "error",
        ]  # fmt: skip

    async def _spawn(self, i: str) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        logfd = os.open(self.base / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.procs[i] = await asyncio.create_subprocess_exec(
                *self._args(i), stdout=logfd, stderr=logfd, start_new_session=True
            )
        finally:
            os.close(logfd)
        self.channels[i] = grpc.aio.insecure_channel(f"127.0.0.1:{self.client[i]}")

    async def start(self) -> None:
        for i in self.ids:
            await self._spawn(i)
        await self.leader()

    def _unary(self, i: str, method: str, resp):
        return self.channels[i].unary_unary(
            method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=resp.FromString
        )

    async def status(self, i: str):
        if i not in self.procs or self.procs[i].returncode is not None:
            return None
        try:
            st = await self._unary(i, "/etcdserverpb.Maintenance/Status", self.StResp)(
                self.StReq(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        self.member_of[st.header.member_id] = i
        return st

    async def leader(self, exclude: tuple[str, ...] = ()) -> str:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            for i in self.ids:
                if i in exclude:
                    continue
                st = await self.status(i)
                if st is not None and st.leader and st.leader == st.header.member_id:
                    return i
            await asyncio.sleep(0.02)
        raise TimeoutError("etcd elected no leader within 60 s")

    def putter(self, node: str):
        call = self._unary(node, "/etcdserverpb.KV/Put", self.PutResp)

        async def put(key: str) -> None:
            await call(self.PutReq(key=key.encode(), value=VALUE), timeout=10)

        return put

    def batch_putter(self, node: str):
        call = self._unary(node, "/etcdserverpb.KV/Txn", self.TxnResp)

        async def put_many(keys: list[str]) -> None:
            ops = [self.Op(request_put=self.PutReq(key=k.encode(), value=VALUE)) for k in keys]
            await call(self.TxnReq(success=ops), timeout=10)

        return put_many

    async def put_anywhere(self, key: str) -> None:
        # Ask the live members who leads and write there (as the Lepton client follows
        # NotLeader): a write sent to a follower that still believes in the dead leader
        # would wait for etcd's own request timeout (about 7 s) and measure that instead.
        end = time.monotonic() + 30
        while True:
            for i in self.ids:
                st = await self.status(i)
                lead = self.member_of.get(st.leader) if st is not None and st.leader else None
                if lead is None or self.procs[lead].returncode is not None:
                    continue
                try:
                    await self._unary(lead, "/etcdserverpb.KV/Put", self.PutResp)(
                        self.PutReq(key=key.encode(), value=VALUE), timeout=2
                    )
                    return
                except grpc.aio.AioRpcError:
                    pass
            if time.monotonic() > end:
                raise TimeoutError("etcd: no write committed within 30 s of the leader kill")
            await asyncio.sleep(0.02)

    async def kill(self, node: str) -> None:
        p = self.procs[node]
        p.send_signal(signal.SIGKILL)
        await p.wait()
        await self.channels.pop(node).close()

    async def restart(self, node: str) -> None:
        await self._spawn(node)

    async def caught_up(self, node: str) -> None:
        leader = await self.leader()
        target = (await self.status(leader)).raftIndex
        while True:
            st = await self.status(node)
            if st is not None and st.raftIndex >= target:
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGKILL)
                await p.wait()
        for ch in self.channels.values():
            await ch.close()


# ---- the measurements ----


async def measure(sys_, args) -> dict[str, float]:
    out: dict[str, float] = {}
    await sys_.start()
    leader = await sys_.leader()
    put = sys_.putter(leader)
    for i in range(50):  # warm-up: connections, first snapshot-free steady state
        await put(f"warm{i}")

    lat = []
    t0 = time.perf_counter()
    for i in range(args.seq):
        s = time.perf_counter()
        await put(f"seq{i}")
        lat.append(time.perf_counter() - s)
    el = time.perf_counter() - t0
    out["seq_commits_per_s"] = args.seq / el
    out["seq_p50_ms"] = pct(lat, 50) * 1000
    out["seq_p99_ms"] = pct(lat, 99) * 1000
    print(f"  [{sys_.name}] sequential: {out['seq_commits_per_s']:.0f}/s, p50 {out['seq_p50_ms']:.2f} ms, "
          f"p99 {out['seq_p99_ms']:.2f} ms", flush=True)  # fmt: skip

    per = args.conc_total // args.concurrency

    async def worker(w: int) -> None:
        for i in range(per):
            await put(f"c{w}-{i}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    el = time.perf_counter() - t0
    out["conc_commits_per_s"] = per * args.concurrency / el
    print(
        f"  [{sys_.name}] {args.concurrency} concurrent proposers, a unary call each: "
        f"{out['conc_commits_per_s']:.0f}/s",
        flush=True,
    )
    if hasattr(sys_, "stream_putter"):
        # The same 64 proposers, each with one put in flight, each put its own Raft
        # entry; but each proposer keeps a stream open instead of paying for a whole
        # gRPC call per put (etcd's API has no streaming put).
        putters = [sys_.stream_putter(leader) for _ in range(args.concurrency)]

        async def stream_worker(w: int, rounds: int, tag: str) -> None:
            for i in range(rounds):
                await putters[w](f"{tag}{w}-{i}")

        await asyncio.gather(*(stream_worker(w, 5, "sw") for w in range(args.concurrency)))  # open streams
        st0 = await sys_.stats(leader)
        sper = args.stream_total // args.concurrency
        t0 = time.perf_counter()
        await asyncio.gather(*(stream_worker(w, sper, "s") for w in range(args.concurrency)))
        el = time.perf_counter() - t0
        st1 = await sys_.stats(leader)
        out["stream_commits_per_s"] = sper * args.concurrency / el
        batch = (st1.proposals - st0.proposals) / max(1, st1.fsyncs - st0.fsyncs)
        print(
            f"  [{sys_.name}] {args.concurrency} concurrent proposers, a stream each: "
            f"{out['stream_commits_per_s']:.0f}/s ({batch:.1f} proposals per leader fsync)",
            flush=True,
        )
        for p in putters:
            await p.close()

    put_many = sys_.batch_putter(leader)
    per = args.batch_total // args.batch_concurrency

    async def batch_worker(w: int) -> None:
        for i in range(per):
            await put_many([f"b{w}-{i}-{j}" for j in range(args.batch)])

    t0 = time.perf_counter()
    await asyncio.gather(*(batch_worker(w) for w in range(args.batch_concurrency)))
    el = time.perf_counter() - t0
    out["batch_writes_per_s"] = per * args.batch_concurrency * args.batch / el
    print(
        f"  [{sys_.name}] batches of {args.batch} writes ({args.batch_concurrency} concurrent proposers): "
        f"{out['batch_writes_per_s']:.0f} writes/s",
        flush=True,
    )

    fails = []
    for t in range(args.trials):
        leader = await sys_.leader()
        t0 = time.perf_counter()
        await sys_.kill(leader)
        await sys_.put_anywhere(f"failover{t}")
        fails.append(time.perf_counter() - t0)
        print(f"  [{sys_.name}] failover trial {t + 1}: {fails[-1] * 1000:.0f} ms", flush=True)
        await sys_.restart(leader)
        await sys_.caught_up(leader)
        await asyncio.sleep(0.5)  # let the restarted member settle before the next kill
    if fails:
        out["failover_p50_ms"] = statistics.median(fails) * 1000
        out["failover_max_ms"] = max(fails) * 1000
    return out


async def main_async(args) -> int:
    base = Path(tempfile.mkdtemp(prefix="raft-bench-"))
    results: dict[str, dict[str, float]] = {}
    systems = [LeptonSystem(base)]
    if not args.skip_etcd:
        if shutil.which("etcd"):
            systems.append(EtcdSystem(base))
        else:
            print("etcd not found (apt-get install -y etcd-server etcd-client): etcd half skipped")
    try:
        for s in systems:
            print(f"{s.name}: 3 replicas on loopback, fsync on", flush=True)
            try:
                results[s.name] = await measure(s, args)
            finally:
                await s.close()
    finally:
        for s in systems:
            await s.close()
        shutil.rmtree(base, ignore_errors=True)

    rows = [
        ("seq_commits_per_s", "sequential commits/s (1 client)", True),
        ("seq_p50_ms", "sequential latency p50 ms", False),
        ("seq_p99_ms", "sequential latency p99 ms", False),
        ("conc_commits_per_s", f"commits/s, {args.concurrency} proposers, unary calls", True),
        ("stream_commits_per_s", f"commits/s, {args.concurrency} proposers (lepton: a stream each)", True),
        ("batch_writes_per_s", f"writes/s in batches of {args.batch} (one entry / one txn each)", True),
        ("failover_p50_ms", f"leader SIGKILL -> write committed, p50 ms ({args.trials} trials)", False),
        ("failover_max_ms", "leader SIGKILL -> write committed, max ms", False),
    ]
    lep, etc = results.get("lepton", {}), dict(results.get("etcd", {}))
    if "conc_commits_per_s" in etc:
        etc["stream_commits_per_s"] = etc["conc_commits_per_s"]  # etcd: its unary Put is all it has
    print()
    print(f"{'figure':<58} {'lepton':>10} {'etcd 3.4':>10} {'ratio':>8}")
    for key, label, higher_better in rows:
        a, b = lep.get(key), etc.get(key)
        ratio = ""
        if a and b:
            r = a / b
            ratio = f"{r:.2f}x" + (" (+)" if (r > 1) == higher_better else "")
        fa = f"{a:.1f}" if a is not None else "-"
        fb = f"{b:.1f}" if b is not None else "-"
        print(f"{label:<58} {fa:>10} {fb:>10} {ratio:>8}")
    print("ratio = lepton / etcd; (+) marks where lepton is better")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=500, help="sequential proposals")
    ap.add_argument("--conc-total", type=int, default=4000, help="proposals in the concurrent run")
    ap.add_argument("--stream-total", type=int, default=19200, help="proposals in the streamed run (Lepton)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--batch", type=int, default=50, help="writes per batched proposal (etcd: per txn)")
    ap.add_argument("--batch-total", type=int, default=640, help="batched proposals in all")
    ap.add_argument("--batch-concurrency", type=int, default=16)
    ap.add_argument("--trials", type=int, default=10, help="leader-kill trials")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument(
        "--client-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of this (client) process, the same for both systems (auto: uvloop if installed)",
    )
    args = ap.parse_args()
    print(f"client event loop: {aio.describe(args.client_loop)}", flush=True)
    try:
        return aio.run(main_async(args), loop=args.client_loop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
