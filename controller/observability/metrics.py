"""Prometheus metrics of one controller replica (docs/observability.md lists every name).

Each replica owns a `ControllerMetrics` with its own CollectorRegistry, never
the process-global one: tests run several replicas in one process and each
must count only its own work. Two kinds of metric live here:

* counters and histograms that the code paths feed as work happens (RPCs,
  proposals, WAL fsyncs, placement rounds, agent reports, rebalance moves),
  through the small `observe_*` methods below; callers reach them as
  `replica.metrics`, which may be None (Raft stand-ins in tests);
* gauges read from the replica at scrape time by `_ReplicaCollector` (Raft
  term and indexes, leadership, tasks by state, nodes by status, connected
  agents): nothing has to remember to update them, and a scrape costs one
  pass over the state. Scrapes run on the event loop (see http.py), so the
  collector reads the state without racing apply().

Names follow the Prometheus conventions: `lepton_` prefix, base units
(`_seconds`, `_bytes`), `_total` on counters (prometheus_client adds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latency buckets: Raft commits and RPCs take milliseconds; placement over a
# large cluster can take a good part of a second.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def unplaced_reason_label(key: str) -> str:
    """A placement filter key -> a bounded label value (constraint and GPU keys carry user text)."""
    if key.startswith("constraint "):
        return "constraint"
    if key.startswith("gpu model "):
        return "gpu model"
    return key


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.grpc_requests = Counter(
            "lepton_grpc_requests",
            "gRPC requests handled, by full method and status code",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "lepton_grpc_request_duration_seconds",
            "Time from receiving a gRPC request to its status (streams: the whole stream)",
            ["method"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.proposal_duration = Histogram(
            "lepton_raft_proposal_duration_seconds",
            "Time from proposing a command until it is applied on this replica (leader)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.proposal_failures = Counter(
            "lepton_raft_proposal_failures",
            "Proposals that did not apply, by error class (NotLeader, OutcomeUnknown, ...)",
            ["error"],
            registry=r,
        )
        self.fsync_duration = Histogram(
            "lepton_raft_wal_fsync_duration_seconds",
            "Time to write and fsync one batch of the Raft write-ahead log",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.placement_rounds = Counter(
            "lepton_placement_rounds", "Placement rounds run on this replica as leader", registry=r
        )
        self.placement_duration = Histogram(
            "lepton_placement_plan_duration_seconds",
            "Time place() took to plan one round (pure planning, without the commit)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.tasks_placed = Counter(
            "lepton_placement_tasks_placed", "Task assignments committed by placement rounds", registry=r
        )
        self.preemptions = Counter(
            "lepton_placement_preemptions", "Tasks preempted to make room for higher priority", registry=r
        )
        self.unplaced = Gauge(
            "lepton_placement_unplaced_tasks",
            "Pending tasks the last placement round could not place, by filter reason "
            "(a task short of two resources counts under both)",
            ["reason"],
            registry=r,
        )
        self.agent_reports = Counter(
            "lepton_agent_reports", "Usage reports received from agents (rate() = reports/s)", registry=r
        )
        self.report_lag = Histogram(
            "lepton_agent_report_lag_seconds",
            "Leader receive time minus the agent's sample time (includes clock skew)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.rebalance_moves = Counter(
            "lepton_rebalance_moves",
            "Task moves committed, by cause (rebalance, drain)",
            ["cause"],
            registry=r,
        )
        self._unplaced_labels: set[str] = set()
        self._collector: _ReplicaCollector | None = None

    def bind(self, replica, auth_failures: Callable[[], dict[str, int]] | None = None) -> None:
        """Adds the scrape-time gauges of `replica` (once); `auth_failures` returns {reason: count}."""
        if self._collector is None:
            self._collector = _ReplicaCollector(replica, auth_failures)
            self.registry.register(self._collector)
        node = getattr(replica, "node", None)
        if node is not None and hasattr(node, "on_fsync"):
            node.on_fsync = self.fsync_duration.observe

    # ---- fed by the code paths ------------------------------------------------

    def observe_proposal(self, seconds: float, error: BaseException | None = None) -> None:
        if error is None:
            self.proposal_duration.observe(seconds)
        else:
            self.proposal_failures.labels(type(error).__name__).inc()

    def observe_placement(
        self, seconds: float, placed: int, preempted: int, unplaced_counts: Iterable[dict]
    ) -> None:
        """One round: plan time, committed assignments/preemptions, and the reasons of the unplaced."""
        self.placement_rounds.inc()
        self.placement_duration.observe(seconds)
        if placed:
            self.tasks_placed.inc(placed)
        if preempted:
            self.preemptions.inc(preempted)
        by_reason: dict[str, int] = {}
        for counts in unplaced_counts:
            keys = {unplaced_reason_label(k) for k, n in counts.items() if n > 0} or {"no nodes"}
            for k in keys:
                by_reason[k] = by_reason.get(k, 0) + 1
        # Reasons that no longer apply go to 0 rather than vanish, so graphs drop to zero.
        for k in self._unplaced_labels - by_reason.keys():
            self.unplaced.labels(k).set(0)
        for k, n in by_reason.items():
            self.unplaced.labels(k).set(n)
        self._unplaced_labels |= by_reason.keys()

    def observe_report(self, sample_time_ms: int, now_ms: int) -> None:
        self.agent_reports.inc()
        if sample_time_ms > 0:
            self.report_lag.observe(max(0.0, (now_ms - sample_time_ms) / 1000.0))

    def observe_moves(self, cause: str, n: int = 1) -> None:
        if n:
            self.rebalance_moves.labels(cause).inc(n)


class Timer:
    """`with Timer() as t: ...; t.seconds` -- perf_counter based, for observe_* calls."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


class _ReplicaCollector:
    """Gauges read from the replica when scraped."""

    def __init__(self, replica, auth_failures: Callable[[], dict[str, int]] | None) -> None:
        self.r = replica
        self.auth_failures = auth_failures
        # Counting tasks and nodes walks the whole state (about 70 ms at 50,000 tasks and
        # 5,000 nodes, on the event loop); reuse the result while nothing was applied.
        self._cached_at: tuple[int, int] | None = None
        self._cached: tuple[dict, dict[str, int]] = ({}, {})

    def _state_counts(self, state) -> tuple[dict, dict[str, int]]:
        key = (id(state), state.applied_index)
        if key != self._cached_at:
            by_status: dict[str, int] = {}
            for n in state.nodes():
                st = _node_status(n)
                by_status[st] = by_status.get(st, 0) + 1
            self._cached = (state.counts(), by_status)
            self._cached_at = key
        return self._cached

    def describe(self):
        return []  # unchecked collector: the families depend on what the replica has

    def collect(self):
        r = self.r
        node, state, sessions = r.node, r.state, r.sessions

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("lepton_raft_term", "Current Raft term of this replica", node.term)
        yield gauge("lepton_raft_commit_index", "Highest log index known committed", node.commit_index)
        yield gauge("lepton_raft_applied_index", "Highest log index applied here", node.applied_index)
        yield gauge(
            "lepton_raft_snapshot_index",
            "Index of the newest Raft snapshot here",
            getattr(node, "snapshot_index", 0),
        )
        yield gauge(
            "lepton_raft_is_leader", "1 if this replica is the Raft leader", 1 if node.is_leader else 0
        )
        yield gauge("lepton_raft_has_leader", "1 if this replica knows a leader", 1 if node.leader_id else 0)
        progress = node.peer_progress() if node.is_leader and hasattr(node, "peer_progress") else {}
        match = GaugeMetricFamily(
            "lepton_raft_peer_match_index",
            "Leader only: highest index known replicated per voter",
            labels=["peer"],
        )
        active = GaugeMetricFamily(
            "lepton_raft_peer_active", "Leader only: 1 if the voter answered recently", labels=["peer"]
        )
        for peer, p in sorted(progress.items()):
            match.add_metric([peer], p.get("match", 0))
            active.add_metric([peer], 1 if p.get("recent_active") else 0)
        yield match
        yield active
        stats = getattr(node, "stats", None) or {}
        for key, name, doc in (
            ("leader_changes", "lepton_raft_leader_changes", "Times this replica saw a new leader"),
            ("proposals", "lepton_raft_proposals", "Proposals taken into the log by this replica as leader"),
            ("fsyncs", "lepton_raft_wal_fsyncs", "WAL fsync batches (group commits)"),
            ("applied", "lepton_raft_entries_applied", "Log entries applied on this replica"),
            (
                "late_ticks",
                "lepton_raft_late_ticks",
                "Raft ticks that ran more than half an election timeout late (an overloaded event loop)",
            ),
        ):
            if key in stats:
                yield CounterMetricFamily(name, doc, value=stats[key])

        counts, by_status = self._state_counts(state)
        tasks = GaugeMetricFamily("lepton_tasks", "Tasks in the replicated state, by state", labels=["state"])
        for st, n in counts["tasks_by_state"].items():
            tasks.add_metric([st], n)
        yield tasks
        nodes = GaugeMetricFamily(
            "lepton_nodes", "Nodes in the replicated state, by status", labels=["status"]
        )
        for s, n in sorted(by_status.items()):
            nodes.add_metric([s], n)
        yield nodes
        yield gauge("lepton_jobs_active", "Jobs not yet finished or cancelled", counts["jobs_total"])
        yield CounterMetricFamily(
            "lepton_events", "Events recorded in the replicated event log", value=state.last_event_seq
        )
        yield gauge(
            "lepton_agents_connected",
            "Agent streams open on this replica (leader only)",
            len(sessions.sessions),
        )
        if self.auth_failures is not None:
            fam = CounterMetricFamily(
                "lepton_auth_failures", "Requests refused by authentication/authorization", labels=["reason"]
            )
            for reason, n in sorted(self.auth_failures().items()):
                fam.add_metric([reason], n)
            yield fam


def _node_status(n) -> str:
    from lepton.v1 import types_pb2

    if n.draining:
        return "draining"
    if n.cordoned and n.status == types_pb2.NODE_STATUS_READY:
        return "cordoned"
    return types_pb2.NodeStatus.Name(n.status).removeprefix("NODE_STATUS_").lower()
