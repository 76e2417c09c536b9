"""`Observability`: what controller/server.py wires for one replica (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from controller.observability import eventlog
from controller.observability.health import HealthMonitor
from controller.observability.http import MetricsHTTPServer
from controller.observability.interceptor import MetricsInterceptor
from controller.observability.metrics import ControllerMetrics

log = logging.getLogger("lepton.controller")


def _security_auth_failures() -> Callable[[], dict[str, int]] | None:
    """The security module's refusal counters ({reason: count}), if this build has them."""
    try:
        from controller.security.auth import AUTH_FAILURES
    except ImportError:
        return None
    return AUTH_FAILURES.snapshot


class Observability:
    def __init__(self, metrics_listen: str = "") -> None:
        self.metrics_listen = metrics_listen
        self.metrics = ControllerMetrics()
        self.interceptor = MetricsInterceptor(self.metrics)
        self.health: HealthMonitor | None = None
        self.http: MetricsHTTPServer | None = None
        self._events: asyncio.Task | None = None

    def register(self, server, replica) -> None:
        """Before the gRPC server starts: Health + reflection services."""
        self.health = HealthMonitor(replica)
        self.health.register(server)

    async def start(self, replica, auth_failures: Callable[[], dict[str, int]] | None = None) -> None:
        """After Raft started: scrape-time gauges, health updates, the /metrics endpoint."""
        replica.metrics = self.metrics
        replica.sessions.metrics = self.metrics
        self.metrics.bind(replica, auth_failures or _security_auth_failures())
        if self.health is not None:
            await self.health.start()
        self._events = asyncio.create_task(eventlog.run(replica), name="event-log")
        if self.metrics_listen:
            self.http = MetricsHTTPServer(
                self.metrics_listen,
                self.metrics.registry,
                self.health.status if self.health is not None else None,
            )
            await self.http.start()

    async def stop(self) -> None:
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
            self._events = None
        if self.health is not None:
            await self.health.stop()
        if self.http is not None:
            await self.http.stop()
            self.http = None
