"""The one place that wires a controller replica together.

`ControllerServer` builds the ClusterState, the Raft node, the agent session
registry, the leader loops and the gRPC server (ControlService +
AgentService on --listen), starts them in order and stops them in reverse.
`Replica` is the small facade the servicers and loops share: propose a
command (stamped with the leader clock and mapped errors), do a linearizable
read barrier, and build NotLeader errors that carry the leader's API address.
Everything else lives in the modules it wires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from controller.config import Clock, ControllerConfig
from controller.security import setup as security_setup
from controller.sessions import SessionRegistry
from controller.state import commands
from lepton.errors import LeptonError, NotLeader, Unavailable
from lepton.v1 import agent_pb2, control_pb2, control_pb2_grpc

log = logging.getLogger("lepton.controller")

# How long a replica waits between attempts to tell the leader its API address.
MEMBER_REGISTER_INTERVAL = 0.5


class NotifyingStateMachine:
    """Wraps ClusterState so every apply/restore wakes whoever waits on state changes."""

    def __init__(self, inner, on_change: Callable[[], None]) -> None:
        self.inner = inner
        self._on_change = on_change

    def apply(self, index: int, term: int, data: bytes):
        result = self.inner.apply(index, term, data)
        self._on_change()
        return result

    def snapshot(self) -> bytes:
        return self.inner.snapshot()

    def restore(self, data: bytes) -> None:
        self.inner.restore(data)
        self._on_change()


class Replica:
    """What servicers and loops need of this replica; no policy of its own."""

    def __init__(self, cfg: ControllerConfig, clock: Clock, state, node, sessions: SessionRegistry) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = state
        self.node = node
        self.sessions = sessions
        self.metrics = None  # ControllerMetrics once observability is wired (None in bare tests)

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def is_leader(self) -> bool:
        return self.node.is_leader

    def member_api_address(self, member_id: str) -> str:
        if not member_id:
            return ""
        if member_id == self.node.id:
            return self.cfg.api_address
        for m in self.state.members():
            if m.id == member_id:
                return m.api_address
        return ""

    def registered_api_address(self) -> str:
        """This replica's API address as the replicated members list has it ("" if absent)."""
        for m in self.state.members():
            if m.id == self.node.id:
                return m.api_address
        return ""

    def not_leader(self) -> NotLeader:
        leader = self.node.leader_id if self.node.leader_id != self.node.id else ""
        return NotLeader(
            leader_id=leader, leader_api_address=self.member_api_address(leader), term=self.node.term
        )

    def require_leader(self) -> None:
        if not self.node.is_leader:
            raise self.not_leader()

    async def propose(self, body, *, plan_term: int = 0, request_id: str = "", timeout: float | None = None):  # noqa: ASYNC109
        """Proposes one command; returns apply's result or raises the LeptonError it maps to."""
        cmd = commands.command(body, time_ms=self.clock.now_ms(), plan_term=plan_term, request_id=request_id)
        t0 = time.perf_counter()
        try:
            result = await self.node.propose(
                commands.encode(cmd), timeout=timeout or self.cfg.proposal_timeout
            )
        except LeptonError as e:
            if self.metrics is not None:
                self.metrics.observe_proposal(0.0, e)
            if isinstance(e, NotLeader):
                raise self.not_leader() from None
            raise
        if self.metrics is not None:
            self.metrics.observe_proposal(time.perf_counter() - t0)
        return commands.raise_if_error(result)

    async def read(self, stale: bool) -> None:
        """Linearizable read barrier unless stale reads were asked for."""
        if stale:
            return
        try:
            await self.node.read_index(timeout=self.cfg.proposal_timeout)
        except NotLeader:
            raise self.not_leader() from None


def routable_host() -> str:
    """This machine's address on its default route (no packet is sent), else loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class Malformed:
    """Stands in for a request whose bytes are not the expected protobuf message.

    gRPC would answer a deserializer exception with INTERNAL; handing the
    servicer this value instead lets it answer INVALID_ARGUMENT.
    """

    def __init__(self, type_name: str, error: str) -> None:
        self.message = f"malformed {type_name}: {error}"


def _tolerant_deserializer(cls):
    def deserialize(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(cls.DESCRIPTOR.name, str(e) or "cannot parse")

    return deserialize


def add_tolerant_service(server: grpc.aio.Server, service, servicer) -> None:
    """Registers `servicer` for the service descriptor like the generated add_*_to_server,
    but with deserializers that turn unparsable requests into `Malformed` values."""
    handlers = {}
    for m in service.methods:
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = kind(
            getattr(servicer, m.name),
            request_deserializer=_tolerant_deserializer(req),
            response_serializer=resp.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class ControllerServer:
    """Owns the lifetime of one replica's parts. `node_factory` lets tests use a Raft stand-in."""

    def __init__(
        self,
        cfg: ControllerConfig,
        *,
        clock: Clock | None = None,
        node_factory: Callable | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self._node_factory = node_factory
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.replica: Replica | None = None
        self.leader_loops = None
        self.obs = None  # controller.observability.Observability
        self._bg: list[asyncio.Task] = []

    @property
    def address(self) -> str:
        host = self.cfg.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def _make_node(self, sm):
        if self._node_factory is not None:
            return self._node_factory(self.cfg, sm)
        from controller.raft.node import RaftConfig, RaftNode

        raft_server_creds, raft_channel_creds = security_setup.raft_credentials(self.cfg)
        rc = RaftConfig(
            id=self.cfg.id,
            peers=dict(self.cfg.peers),
            data_dir=Path(self.cfg.data_dir) / "raft",
            listen=self.cfg.raft_listen,
            tick_interval=self.cfg.tick_interval,
            election_ticks=self.cfg.election_ticks,
            heartbeat_ticks=self.cfg.heartbeat_ticks,
            snapshot_entries=self.cfg.snapshot_entries,
            fsync=self.cfg.fsync,
            server_credentials=raft_server_creds,
            channel_credentials=raft_channel_creds,
        )
        return RaftNode(rc, sm)

    async def start(self) -> None:
        from controller.agent_service import AgentServicer
        from controller.control_service import ControlServicer
        from controller.leader import LeaderLoops
        from controller.observability import Observability
        from controller.state import ClusterState

        sessions = SessionRegistry()
        state = ClusterState()
        sessions.desired_version = state.desired_version
        sessions.desired_changes = state.take_desired_changes
        node = self._make_node(NotifyingStateMachine(state, sessions.notify_applied))
        replica = Replica(self.cfg, self.clock, state, node, sessions)
        self.replica = replica

        opts = [
            ("grpc.max_receive_message_length", self.cfg.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        security_setup.warn_if_insecure(self.cfg)
        self.obs = Observability(self.cfg.metrics_listen)
        # The metrics interceptor goes first (outermost) so refused calls are counted too.
        interceptors = [self.obs.interceptor, *security_setup.interceptors(self.cfg)]
        server = grpc.aio.server(options=opts, interceptors=interceptors)
        add_tolerant_service(
            server, control_pb2.DESCRIPTOR.services_by_name["ControlService"], ControlServicer(replica)
        )
        add_tolerant_service(
            server, agent_pb2.DESCRIPTOR.services_by_name["AgentService"], AgentServicer(replica)
        )
        self.obs.register(server, replica)  # grpc.health.v1 + reflection on the API port
        try:
            creds = security_setup.api_credentials(self.cfg)
            if creds is not None:
                self.port = server.add_secure_port(self.cfg.listen, creds)
            else:
                self.port = server.add_insecure_port(self.cfg.listen)
        except RuntimeError as e:
            raise Unavailable(f"cannot listen on {self.cfg.listen}: {e}") from None
        if self.port == 0:
            raise Unavailable(f"cannot listen on {self.cfg.listen}")
        # With port 0 the real port is only known now; others must learn that one.
        if not self.cfg.advertise:
            host = self.cfg.listen.rpartition(":")[0]
            if host in ("0.0.0.0", "[::]", "::", ""):
                host = routable_host()  # a wildcard is no address to redirect a client to
            self.cfg.advertise = f"{host}:{self.port}"
        await server.start()
        self.server = server

        self.leader_loops = LeaderLoops(replica)
        node.add_leadership_listener(self.leader_loops.on_leadership)
        try:
            await node.start()
        except RuntimeError as e:  # grpc's "failed to bind" and the like
            raise Unavailable(f"cannot start Raft on {self.cfg.raft_listen}: {e}") from None
        host, _, port = self.cfg.raft_listen.rpartition(":")
        if port == "0" and getattr(node, "raft_port", 0):
            # --raft-listen ...:0 (dev, tests): register the port Raft really got.
            self.cfg.raft_listen = f"{host}:{node.raft_port}"
        await self.obs.start(replica)
        self._bg.append(asyncio.create_task(self._register_member_loop(), name="register-member"))
        log.info("controller %s serving API on %s (raft %s)", self.cfg.id, self.address, self.cfg.raft_listen)

    async def stop(self) -> None:
        if self.obs is not None:
            await self.obs.stop()  # health says NOT_SERVING before anything goes away
        for t in self._bg:
            t.cancel()
        for t in self._bg:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._bg.clear()
        if self.leader_loops is not None:
            await self.leader_loops.stop()
        if self.replica is not None:
            self.replica.sessions.close_all()
        if self.server is not None:
            await self.server.stop(self.cfg.grace)
        if self.replica is not None:
            try:
                await self.replica.node.stop()
            except Exception:  # e.g. it never started; shutting down must still finish
                log.exception("stopping Raft failed")
        log.info("controller %s stopped", self.cfg.id)

    async def _register_member_loop(self) -> None:
        """Tells the leader this replica's API address until the replicated members list has it.

        The leader registers itself (leader.py); a follower can only do it through
        the leader, whose address it learns from the leader's own registration.
        """
        r = self.replica
        assert r is not None
        while True:
            await asyncio.sleep(MEMBER_REGISTER_INTERVAL)
            if r.is_leader or r.registered_api_address() == self.cfg.api_address:
                continue
            target = r.member_api_address(r.node.leader_id)
            if not target:
                continue
            try:
                async with security_setup.peer_channel(self.cfg, target) as ch:
                    stub = control_pb2_grpc.ControlServiceStub(ch)
                    await stub.RegisterMember(
                        control_pb2.RegisterMemberRequest(
                            id=self.cfg.id,
                            api_address=self.cfg.api_address,
                            raft_address=self.cfg.raft_listen,
                        ),
                        timeout=self.cfg.proposal_timeout,
                        metadata=security_setup.peer_metadata(self.cfg),
                    )
            except (grpc.RpcError, LeptonError) as e:
                log.debug("registering with leader at %s failed: %s", target, e)
