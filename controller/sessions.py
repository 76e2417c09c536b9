"""The leader's registry of agent streams and the live (soft) state they carry.

One `AgentSession` per connected node: the Connect handler writes whatever
the session says is due. Desired sets are level-triggered, so a session never
queues old sets: after every applied command the registry bumps a generation
and each session recomputes its node's desired set, sending it only when it
differs from the last one sent.

Live usage, last report times and a bounded per-node utilisation history are
kept here, in leader memory only: telemetry never goes through Raft and is
rebuilt from the next reports after a failover.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from lepton.v1 import agent_pb2, types_pb2

HISTORY_LEN = 600  # samples per node (10 min at 1 Hz) for the rebalancer


@dataclass
class Live:
    """Soft state of one node, as its agent last reported."""

    usage: types_pb2.NodeUsage = field(default_factory=types_pb2.NodeUsage)
    last_report_mono: float = 0.0  # monotonic seconds: what liveness measures
    last_report_ms: int = 0  # wall time, for display
    task_usage: dict[str, agent_pb2.TaskUsage] = field(default_factory=dict)
    # (time_ms, cpu_millis, memory_bytes, network_mbps) samples: absolute, so the
    # rebalancer can relate them to the node's allocatable resources.
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_LEN))


class AgentSession:
    """One agent's stream on this leader."""

    def __init__(self, node_id: str, registry: SessionRegistry) -> None:
        self.node_id = node_id
        self._registry = registry
        self.closed = asyncio.Event()
        # Set when this node's desired set may have changed (and at first, so the
        # set goes out right after Welcome); the stream's writer clears it.
        self.wake = asyncio.Event()
        self.wake.set()
        self.sent_version = -1
        self.sent_tasks: bytes | None = None

    def close(self) -> None:
        self.closed.set()
        self.wake.set()

    def due_desired(self, version: int, tasks: list) -> agent_pb2.DesiredTasks | None:
        """Returns the set to send if it differs from the last one sent (or none was sent)."""
        msg = agent_pb2.DesiredTasks(version=version, tasks=tasks)
        body = b"".join(t.SerializeToString(deterministic=True) for t in tasks)
        same = self.sent_tasks is not None and body == self.sent_tasks
        self.sent_version = version
        if same:
            # Same tasks under a newer version (e.g. a change that was undone): nothing to do.
            return None
        self.sent_tasks = body
        return msg

    async def wait_for_change(self) -> bool:
        """Waits until this node's desired set may have changed; False once the stream is closed."""
        await self.wake.wait()
        self.wake.clear()
        return not self.closed.is_set()


class SessionRegistry:
    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}
        self.live: dict[str, Live] = {}
        self.generation = 0  # bumps once per batch of applied commands
        self.changed = asyncio.Event()  # replaced (after being set) at each bump: a broadcast
        self.capacity_changed = asyncio.Event()  # wakes the placement round
        # node id -> version of its desired set (ClusterState.desired_version), wired by server.py.
        self.desired_version = None
        # () -> node ids whose desired set changed since the last call, or None when
        # unknown (ClusterState.take_desired_changes), wired by server.py.
        self.desired_changes = None
        self._flush_pending = False
        # task id -> why the last placement round could not place it (soft state:
        # explanations for `jobs show`, recomputed every round, never replicated).
        self.unplaced: dict[str, str] = {}
        self.metrics = None  # ControllerMetrics (observability), when wired

    # --- streams -------------------------------------------------------

    def open(self, node_id: str) -> AgentSession:
        """Registers a stream; an older stream of the same node is closed (the agent reconnected)."""
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()
        s = AgentSession(node_id, self)
        self.sessions[node_id] = s
        return s

    def close(self, session: AgentSession) -> None:
        session.close()
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]

    def close_all(self) -> None:
        """Leadership lost: end every stream so agents reconnect to the new leader."""
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()
        self.live.clear()
        self.unplaced.clear()

    def connected(self, node_id: str) -> bool:
        return node_id in self.sessions

    # --- state changes -------------------------------------------------

    def notify_applied(self) -> None:
        """Called after each applied command (on the event loop).

        Raft applies commands in batches; the wake-ups are coalesced into one
        flush per batch, and only streams whose node's desired set changed are
        woken: the state machine lists those nodes, so a flush costs in
        proportion to the change, not to the 5,000 connected agents.
        """
        if self._flush_pending:
            return
        self._flush_pending = True
        try:
            asyncio.get_running_loop().call_soon(self._flush)
        except RuntimeError:  # no loop (a test applying directly): flush now
            self._flush()

    def _flush(self) -> None:
        self._flush_pending = False
        self.generation += 1
        ev, self.changed = self.changed, asyncio.Event()
        ev.set()
        changed = self.desired_changes() if self.desired_changes is not None else None
        if changed is not None:
            # Only the nodes whose set changed: with 5,000 agents, checking every
            # stream on every flush cost more than the changes themselves.
            sessions = self.sessions
            for nid in changed:
                s = sessions.get(nid)
                if s is not None:
                    s.wake.set()
            return
        version = self.desired_version
        for s in self.sessions.values():
            if version is None or s.sent_tasks is None or version(s.node_id) != s.sent_version:
                s.wake.set()

    # --- reports -------------------------------------------------------

    def record_report(self, node_id: str, report: agent_pb2.Report, mono_now: float, now_ms: int) -> None:
        live = self.live.setdefault(node_id, Live())
        live.usage = report.usage
        live.last_report_mono = mono_now
        live.last_report_ms = now_ms
        live.task_usage = {t.task_id: t for t in report.tasks}
        u = report.usage
        live.history.append((report.time_ms or now_ms, u.cpu_millis, u.memory_used_bytes, u.network_mbps))
        if self.metrics is not None:
            self.metrics.observe_report(report.time_ms, now_ms)

    def touch(self, node_id: str, mono_now: float, now_ms: int) -> None:
        """A Hello counts as a sign of life too."""
        live = self.live.setdefault(node_id, Live())
        live.last_report_mono = mono_now
        live.last_report_ms = now_ms
