"""Two Raft transports on loopback: messages, chunked snapshots, cluster identity, unreachable peers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from controller.raft.transport import RaftTransport
from controller.raft.types import ConfState, Entry, EntryType, Message, MsgType, Snapshot, SnapshotMeta


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.event = asyncio.Event()

    def __call__(self, m: Message) -> None:
        self.messages.append(m)
        self.event.set()

    async def wait_for(self, pred, within: float = 10.0) -> Message:
        async def loop():
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                self.event.clear()
                await self.event.wait()

        return await asyncio.wait_for(loop(), within)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def pair():
    ia, ib = Inbox(), Inbox()
    a = RaftTransport("a", "127.0.0.1:0", ia, cluster_id="t", chunk_bytes=64 * 1024)
    b = RaftTransport("b", "127.0.0.1:0", ib, cluster_id="t", chunk_bytes=64 * 1024)
    await a.start()
    await b.start()
    await a.set_peers({"a": f"127.0.0.1:{a.port}", "b": f"127.0.0.1:{b.port}"})
    await b.set_peers({"a": f"127.0.0.1:{a.port}", "b": f"127.0.0.1:{b.port}"})
    try:
        yield a, ia, b, ib
    finally:
        await a.stop()
        await b.stop()


async def test_messages_round_trip_with_entries(pair):
    a, ia, b, ib = pair
    entries = tuple(Entry(3, i, EntryType.NORMAL, bytes([i % 256]) * i) for i in range(1, 40))
    sent = Message(
        MsgType.APP, "a", "b", term=3, log_term=2, index=7, entries=entries, commit=5, context=b"x"
    )
    a.send([sent])
    got = await ib.wait_for(lambda m: m.type == MsgType.APP)
    assert got == sent
    b.send([Message(MsgType.APP_RESP, "b", "a", term=3, index=46, reject=True, reject_hint=9, hint_term=2)])
    resp = await ia.wait_for(lambda m: m.type == MsgType.APP_RESP)
    assert (resp.frm, resp.index, resp.reject, resp.reject_hint, resp.hint_term) == ("b", 46, True, 9, 2)
    # Order on one stream is preserved.
    a.send([Message(MsgType.HEARTBEAT, "a", "b", term=3, commit=i) for i in range(100)])
    await ib.wait_for(lambda m: m.type == MsgType.HEARTBEAT and m.commit == 99)
    commits = [m.commit for m in ib.messages if m.type == MsgType.HEARTBEAT]
    assert commits == list(range(100))


async def test_multi_chunk_snapshot_is_reassembled_and_reported(pair):
    a, ia, b, ib = pair
    data = bytes(range(256)) * 4000  # ~1 MB in 64 KiB chunks: 16 chunks
    snap = Snapshot(SnapshotMeta(120, 4, ConfState(("a", "b", "c"))), data)
    a.send([Message(MsgType.SNAP, "a", "b", term=4, snapshot=snap)])
    got = await ib.wait_for(lambda m: m.type == MsgType.SNAP)
    assert got.snapshot == snap and got.term == 4
    status = await ia.wait_for(lambda m: m.type == MsgType.SNAP_STATUS)
    assert status.frm == "b" and not status.reject


async def test_other_cluster_is_refused():
    ia, ix = Inbox(), Inbox()
    a = RaftTransport("a", "127.0.0.1:0", ia, cluster_id="blue")
    x = RaftTransport("b", "127.0.0.1:0", ix, cluster_id="green")
    await a.start()
    await x.start()
    try:
        await a.set_peers({"b": f"127.0.0.1:{x.port}"})
        for _ in range(5):
            a.send([Message(MsgType.HEARTBEAT, "a", "b", term=1)])
            await asyncio.sleep(0.05)
        # The refusal breaks a's stream, which a reports as an unreachable peer.
        await ia.wait_for(lambda m: m.type == MsgType.UNREACHABLE and m.frm == "b")
        assert ix.messages == []
    finally:
        await a.stop()
        await x.stop()


async def test_unreachable_peer_is_reported_and_snapshot_rejected():
    ia = Inbox()
    a = RaftTransport("a", "127.0.0.1:0", ia, cluster_id="t")
    await a.start()
    try:
        await a.set_peers({"b": f"127.0.0.1:{free_port()}"})  # nobody listens there
        a.send([Message(MsgType.HEARTBEAT, "a", "b", term=1)])
        await ia.wait_for(lambda m: m.type == MsgType.UNREACHABLE and m.frm == "b")
        a.send([Message(MsgType.SNAP, "a", "b", term=1, snapshot=Snapshot(SnapshotMeta(5, 1), b"s"))])
        st = await ia.wait_for(lambda m: m.type == MsgType.SNAP_STATUS)
        assert st.reject
    finally:
        await a.stop()


async def test_full_queue_drops_instead_of_blocking():
    ia = Inbox()
    a = RaftTransport("a", "127.0.0.1:0", ia, cluster_id="t", queue_size=4)
    await a.start()
    try:
        await a.set_peers({"b": f"127.0.0.1:{free_port()}"})
        a.send([Message(MsgType.HEARTBEAT, "a", "b", term=1) for _ in range(100)])  # returns at once
        assert a._peers["b"].dropped > 0
    finally:
        await a.stop()


@pytest.fixture
def self_signed(tmp_path):
    """(key, certificate) PEM bytes of a self-signed certificate for 127.0.0.1."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key.read_bytes(), crt.read_bytes()


async def test_tls_credentials(self_signed):
    """Both sides with TLS credentials exchange messages; a plaintext peer gets nothing through."""
    import grpc

    key, crt = self_signed
    server_creds = grpc.ssl_server_credentials([(key, crt)])
    channel_creds = grpc.ssl_channel_credentials(root_certificates=crt)
    ia, ib = Inbox(), Inbox()
    kw = {"cluster_id": "t", "server_credentials": server_creds, "channel_credentials": channel_creds}
    a = RaftTransport("a", "127.0.0.1:0", ia, **kw)
    b = RaftTransport("b", "127.0.0.1:0", ib, **kw)
    await a.start()
    await b.start()
    try:
        await a.set_peers({"b": f"127.0.0.1:{b.port}"})
        a.send([Message(MsgType.HEARTBEAT, "a", "b", term=2, commit=1)])
        got = await ib.wait_for(lambda m: m.type == MsgType.HEARTBEAT)
        assert got.term == 2
        # A plaintext client is not let in.
        plain = RaftTransport("a", "127.0.0.1:0", Inbox(), cluster_id="t")
        await plain.start()
        try:
            await plain.set_peers({"b": f"127.0.0.1:{b.port}"})
            plain.send([Message(MsgType.HEARTBEAT, "a", "b", term=99)])
            await asyncio.sleep(0.3)
            assert all(m.term != 99 for m in ib.messages)
        finally:
            await plain.stop()
    finally:
        await a.stop()
        await b.stop()
