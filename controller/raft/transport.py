"""gRPC transport between Raft replicas (RaftService in proto/lepton/v1/raft.proto).

Sending: one long-lived client stream per peer fed from a bounded queue.
When the queue is full, or the connection breaks, messages are dropped:
Raft retransmits what matters, and a queue that never drops would only
deliver stale heartbeats late. A broken connection is reported to the core
as an UNREACHABLE message (so the leader stops pipelining to that peer) and
retried with capped exponential backoff. Snapshots go on a second call per
peer (SendSnapshot) in chunks of `chunk_bytes`; when the receiver has them
all the call returns and the sender reports SNAP_STATUS (reject=False), or
reject=True when it failed.

Receiving: messages are decoded and handed to `handler` (the driver's
inbox) in stream order. Snapshot chunks are reassembled and delivered as one
SNAP message. Calls are refused (PERMISSION_DENIED) when the cluster id in
the call metadata is not ours, so two clusters sharing addresses cannot mix.

TLS: pass grpc server and channel credentials; insecure by default. When
the caller presents a verified client certificate (mutual TLS, as the
controller configures it; docs/security.md) a stream is accepted only when
the sender id it claims is a member named by that certificate, and messages
whose `from` differs are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import grpc

from lepton import tls
from lepton.v1 import raft_pb2, raft_pb2_grpc

from .types import ConfState, Entry, EntryType, Message, MsgType, Snapshot, SnapshotMeta

log = logging.getLogger(__name__)

CLUSTER_KEY = "lepton-raft-cluster"
FROM_KEY = "lepton-raft-from"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Limits of one stream write (a batch): far below MAX_MESSAGE_BYTES even when
# the last message added is as large as the core makes them.
_MAX_BATCH = 256
_BATCH_BYTES = 4 * 1024 * 1024


def _approx_size(m: Message) -> int:
    return 64 + sum(len(e.data) + 24 for e in m.entries)


_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Peers come and go in tests and failovers: reconnect quickly.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# ---- protobuf <-> Message ----


def message_to_pb(m: Message) -> raft_pb2.RaftMessage:
    return raft_pb2.RaftMessage(
        type=int(m.type),
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[
            raft_pb2.RaftEntry(term=e.term, index=e.index, type=int(e.type), data=e.data) for e in m.entries
        ],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        hint_term=m.hint_term,
        context=m.context,
        **{"from": m.frm},
    )


# Enum members by wire value: a dict lookup per entry instead of an IntEnum
# constructor call, which is most of the decoding cost of a large batch.
_ENTRY_TYPES = {int(t): t for t in EntryType}


def _entry_type(v: int) -> EntryType:
    t = _ENTRY_TYPES.get(v)
    if t is None:
        raise ValueError(f"{v} is not a valid EntryType")
    return t


def message_from_pb(p: raft_pb2.RaftMessage, snapshot: Snapshot | None = None) -> Message:
    return Message(
        type=MsgType(p.type),
        frm=getattr(p, "from"),
        to=p.to,
        term=p.term,
        log_term=p.log_term,
        index=p.index,
        entries=tuple([Entry(e.term, e.index, _entry_type(e.type), e.data) for e in p.entries]),
        commit=p.commit,
        reject=p.reject,
        reject_hint=p.reject_hint,
        hint_term=p.hint_term,
        snapshot=snapshot,
        context=p.context,
    )


def snapshot_chunks(m: Message, chunk_bytes: int) -> Iterable[raft_pb2.RaftMessage]:
    """Splits a SNAP message into RaftMessages carrying consecutive slices of the data."""
    snap = m.snapshot or Snapshot()
    meta = raft_pb2.RaftSnapshotMeta(index=snap.meta.index, term=snap.meta.term, voters=snap.meta.conf.voters)
    total = len(snap.data)
    offset = 0
    while True:
        p = message_to_pb(m)
        p.snap_meta.CopyFrom(meta)
        p.snap_offset = offset
        p.snap_total = total
        p.snap_chunk = snap.data[offset : offset + chunk_bytes]
        yield p
        offset += chunk_bytes
        if offset >= total:
            return


# ---- receiving ----


class _Servicer(raft_pb2_grpc.RaftServiceServicer):
    def __init__(self, transport: RaftTransport) -> None:
        self.t = transport

    async def _check(self, context: grpc.aio.ServicerContext) -> tuple[str, bool]:
        """(the sender id, whether a client certificate vouches for it); aborts foreign calls."""
        md = dict(context.invocation_metadata() or ())
        cluster = md.get(CLUSTER_KEY, "")
        if cluster != self.t.cluster_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"raft message from cluster {cluster!r}, this replica belongs to {self.t.cluster_id!r}",
            )
        sender = md.get(FROM_KEY, "")
        auth = context.auth_context() or {}
        verified = bool(auth.get("x509_pem_cert"))
        if verified:
            # Mutual TLS proved the peer holds a certificate of the cluster CA; it
            # must also name the replica it speaks for, and that must be a member
            # (an agent's certificate is of the same CA: it may not talk Raft).
            names = tls.peer_names(auth)
            if sender not in names or sender not in self.t.member_ids():
                log.warning("refusing raft stream from %r (certificate names %s)", sender, sorted(names))
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"raft sender {sender!r} is not a member named by the client certificate",
                )
        return sender, verified

    async def Stream(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        sender, verified = await self._check(context)
        async for batch in request_iterator:
            for p in batch.messages:
                if p.to != self.t.node_id:
                    log.warning("dropping raft message for %r received by %r", p.to, self.t.node_id)
                    continue
                if verified and getattr(p, "from") != sender:
                    log.warning(
                        "dropping raft message claiming to be from %r on %r's stream",
                        getattr(p, "from"),
                        sender,
                    )
                    continue
                try:
                    msg = message_from_pb(p)
                except ValueError as e:  # unknown enum value: a newer or broken peer
                    log.warning("dropping undecodable raft message: %s", e)
                    continue
                self.t.handler(msg)
        return raft_pb2.RaftAck()

    async def SendSnapshot(self, request_iterator, context):  # noqa: N802
        sender, verified = await self._check(context)
        first = None
        buf = bytearray()
        async for p in request_iterator:
            if first is None:
                first = p
            if p.snap_offset != len(buf):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshot chunk out of order")
            buf += p.snap_chunk
        if first is None or len(buf) != first.snap_total or first.to != self.t.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "incomplete or misaddressed snapshot")
        if verified and getattr(first, "from") != sender:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "snapshot sender does not match the certificate"
            )
        meta = first.snap_meta
        snap = Snapshot(SnapshotMeta(meta.index, meta.term, ConfState(tuple(meta.voters))), bytes(buf))
        self.t.handler(message_from_pb(first, snapshot=snap))
        return raft_pb2.RaftAck()


# ---- sending ----


class _Peer:
    """The outgoing side towards one peer: a message stream and a snapshot sender."""

    def __init__(self, t: RaftTransport, peer_id: str, address: str) -> None:
        self.t = t
        self.id = peer_id
        self.address = address
        self.queue: asyncio.Queue[Message] = asyncio.Queue(t.queue_size)
        self.snaps: asyncio.Queue[Message] = asyncio.Queue(1)
        if t.channel_credentials is not None:
            self.channel = grpc.aio.secure_channel(address, t.channel_credentials, options=_GRPC_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
        self.stub = raft_pb2_grpc.RaftServiceStub(self.channel)
        self.metadata = ((CLUSTER_KEY, t.cluster_id), (FROM_KEY, t.node_id))
        self.tasks = [
            asyncio.create_task(self._stream_loop(), name=f"raft-send-{peer_id}"),
            asyncio.create_task(self._snapshot_loop(), name=f"raft-snap-{peer_id}"),
        ]
        self.dropped = 0

    def send(self, m: Message) -> None:
        q = self.snaps if m.type == MsgType.SNAP else self.queue
        try:
            q.put_nowait(m)
        except asyncio.QueueFull:
            self.dropped += 1
            if m.type == MsgType.SNAP:
                self._report(MsgType.SNAP_STATUS, reject=True)

    def _report(self, mtype: MsgType, reject: bool = False) -> None:
        self.t.handler(Message(mtype, frm=self.id, to=self.t.node_id, reject=reject))

    async def _stream_loop(self) -> None:
        delay = 0.05
        while True:
            call = self.stub.Stream(metadata=self.metadata)
            try:
                while True:
                    m = await self.queue.get()
                    batch, size = [message_to_pb(m)], _approx_size(m)
                    while not self.queue.empty() and len(batch) < _MAX_BATCH and size < _BATCH_BYTES:
                        m = self.queue.get_nowait()
                        batch.append(message_to_pb(m))
                        size += _approx_size(m)
                    await call.write(raft_pb2.RaftBatch(messages=batch))
                    delay = 0.05
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as e:  # the stream broke: any gRPC or state error
                call.cancel()
                self._on_failure(e)
            # Stale messages are worth nothing after a reconnect: Raft resends.
            while not self.queue.empty():
                self.queue.get_nowait()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _on_failure(self, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.PERMISSION_DENIED:
            log.error("peer %s at %s refused our raft messages: %s", self.id, self.address, e.details())
        else:
            log.debug("raft stream to %s (%s) broke: %r", self.id, self.address, e)
        self._report(MsgType.UNREACHABLE)

    async def _snapshot_loop(self) -> None:
        while True:
            m = await self.snaps.get()
            try:
                await self.stub.SendSnapshot(
                    iter(list(snapshot_chunks(m, self.t.chunk_bytes))), metadata=self.metadata, timeout=120
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("sending snapshot to %s failed: %r", self.id, e)
                self._report(MsgType.UNREACHABLE)
                self._report(MsgType.SNAP_STATUS, reject=True)
            else:
                self._report(MsgType.SNAP_STATUS, reject=False)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.channel.close()


class RaftTransport:
    """Moves Raft messages between replicas. Call start() and stop() on the event loop."""

    def __init__(
        self,
        node_id: str,
        listen: str,
        handler: Callable[[Message], None],
        *,
        cluster_id: str = "lepton",
        peers: dict[str, str] | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        queue_size: int = 4096,
        chunk_bytes: int = 1024 * 1024,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen = listen
        self.handler = handler
        self.server_credentials = server_credentials
        self.channel_credentials = channel_credentials
        self.queue_size = queue_size
        self.chunk_bytes = chunk_bytes
        self.port = 0
        self._initial_peers = dict(peers or {})
        self._peers: dict[str, _Peer] = {}
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server(options=_GRPC_OPTIONS)
        raft_pb2_grpc.add_RaftServiceServicer_to_server(_Servicer(self), self._server)
        try:
            if self.server_credentials is not None:
                self.port = self._server.add_secure_port(self.listen, self.server_credentials)
            else:
                self.port = self._server.add_insecure_port(self.listen)
        except RuntimeError:  # grpc reports a failed bind this way
            self.port = 0
        if not self.port:
            self._server = None
            raise OSError(f"cannot listen for raft traffic on {self.listen}")
        await self._server.start()
        await self.set_peers(self._initial_peers)

    async def set_peers(self, peers: dict[str, str]) -> None:
        """Makes the set of peers (id -> address; our own id is ignored) exactly `peers`."""
        for pid in list(self._peers):
            if pid not in peers or peers[pid] != self._peers[pid].address:
                await self._peers.pop(pid).close()
        for pid, addr in peers.items():
            if pid != self.node_id and pid not in self._peers and addr:
                self._peers[pid] = _Peer(self, pid, addr)

    def peers(self) -> dict[str, str]:
        return {pid: p.address for pid, p in self._peers.items()}

    def member_ids(self) -> set[str]:
        """Ids this replica accepts Raft traffic from: current peers and the configured ones."""
        return set(self._peers) | set(self._initial_peers)

    def send(self, messages: Iterable[Message]) -> None:
        """Queues messages for their peers; never blocks, drops what does not fit."""
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                log.debug("no address for raft peer %r: dropping %s", m.to, m.type.name)
                continue
            peer.send(m)

    async def stop(self, grace: float = 0.5) -> None:
        for pid in list(self._peers):
            await self._peers.pop(pid).close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
