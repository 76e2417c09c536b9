"""Observability of a controller replica: metrics, RPC interceptor, health/reflection, logs.

`Observability` is what controller/server.py wires: it owns the replica's
metrics registry, the gRPC interceptor that counts RPCs, the Health servicer
(plus reflection) on the API port and, with --metrics-listen, the HTTP
endpoint serving /metrics and /healthz. Modules:

| module | owns |
| --- | --- |
| metrics.py | ControllerMetrics: every metric name, the scrape-time collector |
| interceptor.py | MetricsInterceptor: lepton_grpc_requests_total / _duration_seconds |
| health.py | HealthMonitor: grpc.health.v1 statuses, reflection |
| http.py | MetricsHTTPServer: /metrics and /healthz on the event loop |
| logs.py | text/JSON log formatting with node/job/task ids and the Raft term |
| eventlog.py | the replicated events, one log line each, written by the leader |
| wiring.py | `Observability`, the object server.py holds |

The package itself imports nothing heavy: the agent imports `logs` and
`http` from here and must not pay for grpc_health, reflection or the
controller's metrics. `Observability` is loaded on first use.
"""

from __future__ import annotations

__all__ = ["Observability"]


def __getattr__(name: str):
    # PEP 562 lazy export: `from controller.observability import Observability`.
    if name == "Observability":
        from controller.observability.wiring import Observability

        return Observability
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
