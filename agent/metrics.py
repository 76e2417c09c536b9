"""Prometheus metrics of one agent, served on --metrics-listen (off by default).

Names (docs/observability.md):

| metric | type | meaning |
| --- | --- | --- |
| lepton_agent_samples_total | counter | usage samples taken (one per report) |
| lepton_agent_sample_duration_seconds | histogram | time one sample took (psutil/NVML, process trees) |
| lepton_agent_tasks_running | gauge | task processes running now |
| lepton_agent_tasks_known | gauge | task records held (running or finished, not yet forgotten) |
| lepton_agent_task_starts_total | counter | task processes started |
| lepton_agent_task_exits_total{outcome} | counter | exits: succeeded, failed, failed_to_start, stopped |
| lepton_agent_connections_total | counter | successful stream handshakes (Welcome) with a leader |
| lepton_agent_reconnects_total | counter | handshakes after the first: failovers, network loss |
| lepton_agent_connected | gauge | 1 while a stream to a leader is open |
| lepton_agent_desired_version | gauge | version of the desired task set applied last |

The agent must stay cheap (a benchmark figure), so this module -- and
prometheus_client -- is imported only when --metrics-listen is set, the
counters cost one increment per event, and the gauges are read only when
scraped. The registry is per agent (never the global one), so several
in-process agents (the controller's --dev mode, tests) do not collide.

`AgentMetrics.bind(agent)` hooks the counters in without the agent's parts
knowing about metrics: it wraps the sampler's `sample` and the runner's event
sink on those instances.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lepton.v1 import agent_pb2

SAMPLE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_EXIT_OUTCOME = {
    agent_pb2.TASK_EVENT_FAILED_TO_START: "failed_to_start",
    agent_pb2.TASK_EVENT_STOPPED: "stopped",
}


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples = Counter("lepton_agent_samples", "Usage samples taken", registry=r)
        self.sample_duration = Histogram(
            "lepton_agent_sample_duration_seconds",
            "Time one usage sample took",
            buckets=SAMPLE_BUCKETS,
            registry=r,
        )
        self.task_starts = Counter("lepton_agent_task_starts", "Task processes started", registry=r)
        self.task_exits = Counter(
            "lepton_agent_task_exits",
            "Task exits by outcome (succeeded, failed, failed_to_start, stopped)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("succeeded", "failed", "failed_to_start", "stopped"):
            self.task_exits.labels(outcome)  # present at 0 from the start: rate() needs a baseline
        self._agent = None

    def task_event(self, ev: agent_pb2.TaskEvent) -> None:
        if ev.type == agent_pb2.TASK_EVENT_STARTED:
            self.task_starts.inc()
        elif ev.type == agent_pb2.TASK_EVENT_EXITED:
            self.task_exits.labels("succeeded" if ev.exit_code == 0 else "failed").inc()
        elif ev.type in _EXIT_OUTCOME:
            self.task_exits.labels(_EXIT_OUTCOME[ev.type]).inc()

    def wrap_emit(self, emit):
        """An event sink that counts, then hands the event on."""

        def counted(ev: agent_pb2.TaskEvent) -> None:
            try:
                self.task_event(ev)
            finally:
                emit(ev)

        return counted

    def wrap_sample(self, sample):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                self.samples.inc()
                self.sample_duration.observe(time.perf_counter() - t0)

        return timed

    def bind(self, agent) -> None:
        """Hooks into an `agent.main.Agent` (before it runs) and adds its scrape-time gauges."""
        if self._agent is not None:
            return
        self._agent = agent
        agent.sampler.sample = self.wrap_sample(agent.sampler.sample)
        # The runner keeps the sink it was built with; counting happens in front of it.
        if hasattr(agent.runner, "_emit"):
            agent.runner._emit = self.wrap_emit(agent.runner._emit)
        self.registry.register(_AgentCollector(agent))


class _AgentCollector:
    def __init__(self, agent) -> None:
        self.agent = agent

    def describe(self):
        return []

    def collect(self):
        a = self.agent
        records = a.runner.records()
        running = sum(1 for r in records.values() if r.running)
        yield GaugeMetricFamily("lepton_agent_tasks_running", "Task processes running now", value=running)
        yield GaugeMetricFamily(
            "lepton_agent_tasks_known", "Task records held by the runner", value=len(records)
        )
        connections = getattr(a.session, "connections", 0)
        yield CounterMetricFamily(
            "lepton_agent_connections", "Successful stream handshakes with a leader", value=connections
        )
        yield CounterMetricFamily(
            "lepton_agent_reconnects",
            "Handshakes after the first (failovers, network loss)",
            value=max(0, connections - 1),
        )
        connected = 1 if getattr(a.session, "disconnected_since", None) is None and connections else 0
        yield GaugeMetricFamily(
            "lepton_agent_connected", "1 while a stream to a leader is open", value=connected
        )
        yield GaugeMetricFamily(
            "lepton_agent_desired_version",
            "Version of the desired task set applied last",
            value=getattr(a.runner, "desired_version", 0),
        )


async def serve(agent, listen: str):
    """Starts /metrics (and /healthz: connected to a leader) for `agent`; returns the server to stop."""
    from controller.observability.http import MetricsHTTPServer

    m = AgentMetrics()
    m.bind(agent)

    def health() -> tuple[bool, str]:
        s = agent.session
        if getattr(s, "disconnected_since", None) is None and getattr(s, "connections", 0):
            return True, f"connected to {getattr(s, 'leader', '') or 'a leader'}"
        return False, "not connected to a leader"

    server = MetricsHTTPServer(listen, m.registry, health)
    await server.start()
    server.metrics = m
    return server
