"""A tiny HTTP/1.1 server on the event loop for `/metrics` (Prometheus text) and `/healthz`.

Why not prometheus_client.start_http_server: it serves from a thread, and
its collectors would then read the replica's state while the event loop is
applying commands to it. Serving from the loop itself makes every scrape a
consistent read with no locks. The server speaks just enough HTTP for
Prometheus, curl and load balancers: GET (and HEAD) of two paths, one
request per connection, bounded request size, a deadline per connection.

Used by the controller (controller/observability/setup.py) and the agent
(agent/metrics.py) alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("lepton.metrics")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 5.0


class MetricsHTTPServer:
    """`await start()`, `.port`, `await stop()`. `health()` returns (ok, text) for /healthz."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.listen = listen
        self.registry = registry
        self.health = health
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.listen.rpartition(':')[0]}:{self.port}"

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or None
        self._server = await asyncio.start_server(self._handle, host, int(port))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, ctype, body, head_only = self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        try:
            lines = [
                f"HTTP/1.1 {status}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Connection: close",
                "",
                "",
            ]
            writer.write("\r\n".join(lines).encode() + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, str, bytes, bool]:
        if len(head) > MAX_REQUEST_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"request too large\n", False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) < 2:
            return "400 Bad Request", "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = generate_latest(self.registry)
            except Exception:  # a collector bug must not take the scrape endpoint down silently
                log.exception("collecting metrics failed")
                return "500 Internal Server Error", "text/plain", b"collecting metrics failed\n", head_only
            return "200 OK", CONTENT_TYPE_LATEST, body, head_only
        if path == "/healthz" and self.health is not None:
            ok, text = self.health()
            return (
                ("200 OK" if ok else "503 Service Unavailable"),
                "text/plain",
                text.encode() + b"\n",
                head_only,
            )
        return "404 Not Found", "text/plain", b"try /metrics\n", head_only
