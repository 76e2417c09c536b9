"""Raft with real OS processes: three kvdemo replicas on loopback, killed with SIGKILL and restarted.

Each test owns a KvCluster (controller/raft/kvdemo.py) whose close() kills
exactly the processes it started, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest

from controller.raft.kvdemo import KvCluster
from controller.raft.types import Entry
from controller.raft.wal import encode_entry

# Small, fast settings: 20 ms ticks keep elections short without timing assumptions in asserts.
FAST = ("--tick", "0.02", "--election-ticks", "10", "--heartbeat-ticks", "2")


@pytest.fixture
async def cluster_factory(tmp_path):
    made: list[KvCluster] = []

    def make(extra: tuple[str, ...] = ()) -> KvCluster:
        c = KvCluster(tmp_path / f"cluster{len(made)}", extra_args=FAST + extra)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


async def put_many(c: KvCluster, prefix: str, n: int, concurrency: int = 8) -> dict[str, bytes]:
    """Writes n keys, returns the acknowledged ones (all of them, unless put raises)."""
    acked: dict[str, bytes] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        key, value = f"{prefix}{i}", f"value-{prefix}{i}".encode()
        async with sem:
            await c.put(key, value)
        acked[key] = value

    await asyncio.gather(*(one(i) for i in range(n)))
    return acked


async def wait_applied(c: KvCluster, node_id: str, index: int, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        st = await c.status(node_id)
        if st is not None and st.applied_index >= index:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{node_id} did not apply index {index}: {await c.status(node_id)}")


async def assert_has(c: KvCluster, node_id: str, kv: dict[str, bytes]) -> None:
    missing = [k for k, v in kv.items() if await c.get(node_id, k, stale=True) != v]
    assert not missing, f"{node_id} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}"


@pytest.mark.parametrize("event_loop_name", ["auto", "asyncio"])
async def test_leader_sigkill_new_leader_commits(cluster_factory, event_loop_name):
    # auto is uvloop where installed (the default of every Lepton process); the
    # standard loop must work the same (lepton/aio.py).
    c = cluster_factory(("--event-loop", event_loop_name))
    await c.start_all()
    old = await c.wait_leader()
    acked = await put_many(c, "a", 50)
    await c.kill(old, signal.SIGKILL)
    new = await c.wait_leader(exclude=(old,))
    assert new != old
    acked.update(await put_many(c, "b", 20))
    index = await c.put("after-failover", b"yes")
    st = await c.status(new)
    assert st.term > 1 and st.leader_id  # a later term, and a leader everyone follows
    for i in c.replicas:
        if i != old:
            await wait_applied(c, i, index)
            await assert_has(c, i, acked)
    # The killed replica comes back as a follower and catches up.
    await c.start(old)
    await wait_applied(c, old, index)
    await assert_has(c, old, acked)


async def test_sigkill_all_and_restart_keeps_every_acknowledged_write(cluster_factory):
    c = cluster_factory()
    await c.start_all()
    await c.wait_leader()
    acked = await put_many(c, "k", 150, concurrency=16)
    # Writes still in flight when everything dies: only the acknowledged ones must survive.
    in_flight = [asyncio.create_task(c.put(f"late{i}", b"x", within=2)) for i in range(30)]
    await asyncio.sleep(0.01)
    for i in c.replicas:
        await c.kill(i, signal.SIGKILL)
    for t in in_flight:
        try:
            key_index = await t
        except (TimeoutError, Exception):
            continue
        assert key_index > 0
        acked[f"late{in_flight.index(t)}"] = b"x"
    await c.start_all()
    leader = await c.wait_leader()
    index = await c.put("after-restart", b"1")
    await wait_applied(c, leader, index)
    for i in c.replicas:
        await wait_applied(c, i, index)
        await assert_has(c, i, acked)


async def test_lagging_replica_catches_up_through_snapshot(cluster_factory):
    c = cluster_factory(("--snapshot-entries", "40", "--segment-bytes", "4096"))
    await c.start_all()
    leader = await c.wait_leader()
    lagger = next(i for i in c.replicas if i != leader)
    acked = await put_many(c, "early", 10)
    await c.kill(lagger, signal.SIGKILL)
    acked.update(await put_many(c, "while-down", 300, concurrency=16))
    index = await c.put("last", b"!")
    st = await c.status(leader)
    assert st.snapshot_index > 100  # the leader has compacted far past where the lagger stopped
    # ... and deleted its oldest WAL segments (4 KiB segments here).
    wal_dir = c.replicas[leader].data_dir / "raft" / "wal"
    assert not (wal_dir / "00000001.seg").exists(), sorted(p.name for p in wal_dir.iterdir())
    await c.start(lagger)
    await wait_applied(c, lagger, index)
    await assert_has(c, lagger, acked)

    installed = [
        int(i) for i in re.findall(r"installed snapshot at index (\d+)", c.replicas[lagger].log_text())
    ]
    assert installed and max(installed) > 100, installed
    # Its own WAL was compacted too, and it restarts from its snapshot + log.
    await c.kill(lagger, signal.SIGTERM)
    await c.start(lagger)
    await wait_applied(c, lagger, index)
    await assert_has(c, lagger, acked)


async def test_torn_wal_tail_is_repaired_without_losing_acknowledged_writes(cluster_factory):
    c = cluster_factory()
    await c.start_all()
    leader = await c.wait_leader()
    victim = next(i for i in c.replicas if i != leader)
    acked = await put_many(c, "t", 100)
    await c.kill(victim, signal.SIGKILL)
    # The victim died in the middle of its next append: the last few bytes of that
    # write never reached the disk. (Cutting a record it had fsynced and
    # acknowledged instead would be a disk losing synced data: Raft, like etcd,
    # assumes that never happens, and the leader would not resend what the
    # follower acknowledged.)
    seg = sorted((c.replicas[victim].data_dir / "raft" / "wal").glob("*.seg"))[-1]
    torn = encode_entry(Entry(term=1_000, index=1_000_000, data=b"x" * 200))
    fd = os.open(seg, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, torn)
    finally:
        os.close(fd)
    os.truncate(seg, seg.stat().st_size - 5)  # truncate the last few bytes of the newest segment
    await c.start(victim)
    assert "torn tail" in c.replicas[victim].log_text()
    index = await c.put("after-repair", b"ok")
    await wait_applied(c, victim, index)
    await assert_has(c, victim, acked)
    # The repaired replica is now needed for a quorum: kill the leader, writes still commit.
    await c.kill(leader, signal.SIGKILL)
    await c.wait_leader(exclude=(leader,))
    index = await c.put("with-repaired-quorum", b"ok")
    for i in c.replicas:
        if i != leader:
            await wait_applied(c, i, index)
            await assert_has(c, i, acked)


# ---- the driver's API, over real gRPC on loopback, with the replicas in this process ----


async def until(pred) -> None:
    while True:
        if pred():
            return
        await asyncio.sleep(0.02)


async def test_driver_api_in_process(tmp_path):
    from controller.raft.kvdemo import KvStateMachine, free_port
    from controller.raft.node import RaftConfig, RaftNode
    from lepton.errors import NotLeader, Unavailable

    peers = {f"n{i}": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    events: list[tuple[str, bool, int]] = []

    def make(node_id: str, join: bool = False, peer_map: dict[str, str] | None = None) -> RaftNode:
        cfg = RaftConfig(
            id=node_id,
            peers=peer_map or peers,
            data_dir=tmp_path / node_id,
            tick_interval=0.05,  # the default: no spurious elections on a loaded machine
            cluster_id="api-test",
            join=join,
        )
        node = RaftNode(cfg, KvStateMachine())
        node.add_leadership_listener(lambda leading, term, n=node_id: events.append((n, leading, term)))
        return node

    nodes = {i: make(i) for i in peers}

    async def leader(exclude=()) -> RaftNode:
        while True:
            for n in nodes.values():
                if n.is_leader and n.id not in exclude:
                    return n
            await asyncio.sleep(0.02)

    try:
        for n in nodes.values():
            await n.start()
        lead = await asyncio.wait_for(leader(), 20)
        # Listeners run when the loop handles the Ready that carries the change.
        await asyncio.wait_for(until(lambda: (lead.id, True) in [(e[0], e[1]) for e in events]), 20)
        index = await lead.propose(KvStateMachine.encode_put("a", b"1"))
        assert index == lead.applied_index or index <= lead.applied_index
        follower = next(n for n in nodes.values() if n is not lead)
        with pytest.raises(NotLeader) as ei:
            await follower.propose(KvStateMachine.encode_put("b", b"2"))
        assert ei.value.leader_id in ("", lead.id)
        with pytest.raises(NotLeader):
            await follower.read_index()
        await lead.read_index()
        assert lead.sm.data["a"] == b"1"
        assert set(lead.peer_progress()) == set(peers) and follower.peer_progress() == {}
        # A follower whose leader's stream was still in its connect backoff at start
        # may be pre-voting for a moment (as it should); it settles as a follower.
        await asyncio.wait_for(until(lambda: follower.role == "follower"), 20)
        assert lead.members() == peers and lead.role == "leader" and follower.role == "follower"

        # Leadership transfer to the follower.
        await lead.transfer_leadership(follower.id)
        new = await asyncio.wait_for(leader(), 20)
        assert new.id == follower.id
        await asyncio.wait_for(until(lambda: (lead.id, False) in [(e[0], e[1]) for e in events]), 20)

        # A fourth member joins, receives the data, and leaves again.
        peers4 = {**peers, "n4": f"127.0.0.1:{free_port()}"}
        nodes["n4"] = make("n4", join=True, peer_map=peers4)
        await nodes["n4"].start()
        await new.add_member("n4", peers4["n4"])
        assert set(new.members()) == set(peers4)
        await new.propose(KvStateMachine.encode_put("c", b"3"))
        await asyncio.wait_for(until(lambda: nodes["n4"].sm.data.get("c") == b"3"), 20)
        assert nodes["n4"].sm.data["a"] == b"1"
        await new.remove_member("n4")
        assert set(new.members()) == set(peers)
    finally:
        for n in nodes.values():
            await n.stop()
    with pytest.raises(Unavailable):
        await lead.propose(b"x")


async def test_start_refuses_foreign_data_dir_and_taken_port(tmp_path):
    import socket

    from controller.raft.kvdemo import KvStateMachine
    from controller.raft.node import RaftConfig, RaftNode
    from controller.raft.wal import StorageError

    wal = tmp_path / "foreign" / "raft" / "wal"
    wal.mkdir(parents=True)
    (wal / "00000001.seg").write_bytes(b"not a lepton wal segment " * 10)
    node = RaftNode(RaftConfig("n1", {"n1": "127.0.0.1:0"}, tmp_path / "foreign"), KvStateMachine())
    with pytest.raises(StorageError, match="not a Lepton WAL segment"):
        await node.start()
    assert (wal / "00000001.seg").read_bytes().startswith(b"not a lepton")  # untouched

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = f"127.0.0.1:{s.getsockname()[1]}"
        node = RaftNode(RaftConfig("n1", {"n1": taken}, tmp_path / "fresh"), KvStateMachine())
        with pytest.raises(OSError, match="cannot listen"):
            await node.start()
    # Nothing was left open: the same data dir starts cleanly on a free port, as a one-voter cluster.
    node = RaftNode(RaftConfig("n1", {"n1": "127.0.0.1:0"}, tmp_path / "fresh"), KvStateMachine())
    await node.start()
    try:
        await asyncio.wait_for(until(lambda: node.is_leader), 20)
        assert await node.propose(KvStateMachine.encode_put("k", b"v")) > 0
    finally:
        await node.stop()


async def test_put_stream_pipelines_puts_and_answers_each_by_id(cluster_factory):
    """PutStream: many puts in flight on one stream, each its own entry, each answered by id."""
    import grpc

    from lepton.v1 import raft_pb2

    c = cluster_factory()
    await c.start_all()
    lead = await c.wait_leader()
    await c.put("warm", b"up")
    before = await c.status(lead)
    call = c.replicas[lead].stub.PutStream(timeout=30)
    n = 200
    for i in range(1, n + 1):  # all written before any result is read: pipelined
        await call.write(raft_pb2.KvStreamPut(id=i, key=f"s{i}", value=b"v%d" % i))
    results = [await call.read() for _ in range(n)]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF and await call.code() == grpc.StatusCode.OK
    assert sorted(r.id for r in results) == list(range(1, n + 1))
    assert all(r.code == 0 and r.error == "" for r in results)
    assert len({r.index for r in results}) == n  # each put is its own Raft entry
    after = await c.status(lead)
    assert after.proposals - before.proposals == n
    # Proposals that arrive together share Readies and fsyncs (group commit).
    assert after.fsyncs - before.fsyncs < n
    assert await c.get(lead, "s1", stale=False) == b"v1"
    assert await c.get(lead, f"s{n}", stale=False) == b"v%d" % n

    # On a follower every put fails on its own, naming the leader; the stream stays open.
    follower = next(i for i in c.replicas if i != lead)
    call = c.replicas[follower].stub.PutStream(timeout=30)
    for i in (7, 8):
        await call.write(raft_pb2.KvStreamPut(id=i, key=f"f{i}", value=b"x"))
        res = await call.read()
        assert res.id == i and res.index == 0
        assert res.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert res.leader_id == lead and "not the leader" in res.error
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF and await call.code() == grpc.StatusCode.OK
    assert await c.get(lead, "f7", stale=False) is None
