"""gRPC health checking and server reflection on the controller's API port.

Health (grpc.health.v1.Health, from grpcio-health-checking) answers for:

* "" (the whole server) and "lepton.v1.ControlService": SERVING when this
  replica knows a leader and has applied what it knows to be committed (within
  MAX_APPLY_LAG entries), NOT_SERVING otherwise -- e.g. a replica cut off from
  its peers, one that is still replaying its log, or one that is shutting down;
* "lepton.v1.AgentService": SERVING only on the leader and only when the
  above holds, because agent streams are accepted only there (a load balancer
  in front of the agents' --controllers can use it).

The status is recomputed on every leadership change (Raft listener) and every
POLL_INTERVAL (a follower learns that its leader is gone only from timeouts,
which raise no event). Reflection (grpcio-reflection) lists ControlService,
AgentService, Health and itself, so grpcurl and similar tools can explore.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lepton.v1 import agent_pb2, control_pb2

log = logging.getLogger("lepton.controller.health")

CONTROL = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
AGENT = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
POLL_INTERVAL = 0.25
# Applying is fast; a replica more than this far behind its own commit index is
# replaying a backlog (just restarted, or just installed a snapshot).
MAX_APPLY_LAG = 1000

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def replica_health(node) -> tuple[bool, str]:
    """(healthy, why) for a Raft node: knows a leader and is caught up."""
    if not node.leader_id:
        return False, f"no leader known (term {node.term})"
    lag = node.commit_index - node.applied_index
    if lag > MAX_APPLY_LAG:
        return False, f"applying a backlog: applied {node.applied_index} of {node.commit_index}"
    role = "leader" if node.is_leader else f"follower of {node.leader_id}"
    return True, f"{role}, term {node.term}, applied {node.applied_index}/{node.commit_index}"


class HealthMonitor:
    """Keeps the Health servicer's statuses in line with the replica."""

    def __init__(self, replica) -> None:
        self.r = replica
        self.servicer = health.aio.HealthServicer()
        self._task: asyncio.Task | None = None
        self._last: tuple | None = None
        self._stopping = False
        self._lock = asyncio.Lock()  # leadership events and the poll must not interleave their sets

    def register(self, server) -> None:
        """Adds Health and reflection to a grpc.aio server (before it starts)."""
        # grpc's servicer starts with "" SERVING; until Raft has started and the
        # first update ran, this replica is not ready (set() needs a loop turn).
        status = getattr(self.servicer, "_server_status", None)
        if isinstance(status, dict):
            status[""] = NOT_SERVING
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection((CONTROL, AGENT, HEALTH, reflection.SERVICE_NAME), server)

    def status(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "shutting down"
        return replica_health(self.r.node)

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._poll(), name="health-poll")
        self.r.node.add_leadership_listener(self._on_leadership)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Tells watchers NOT_SERVING before the server goes away.
        await self.servicer.enter_graceful_shutdown()

    def _on_leadership(self, _is_leader: bool, _term: int) -> None:
        if not self._stopping:
            asyncio.get_running_loop().create_task(self.update())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.update()
            except Exception:  # keep polling; a failed update must not freeze the status
                log.exception("updating health failed")

    async def update(self) -> None:
        async with self._lock:
            await self._update()

    async def _update(self) -> None:
        ok, why = self.status()
        leader = ok and self.r.node.is_leader
        now = (ok, leader)
        if now == self._last:
            return
        if self._last is not None:
            log.info("health: %s (%s)", "SERVING" if ok else "NOT_SERVING", why)
        self._last = now
        for name in ("", CONTROL):
            await self.servicer.set(name, SERVING if ok else NOT_SERVING)
        await self.servicer.set(AGENT, SERVING if leader else NOT_SERVING)
