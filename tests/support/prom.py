"""Helpers for tests that scrape /metrics: HTTP GET, a sample lookup, and a polling wait."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body); HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


async def scrape(address: str) -> dict[str, object]:
    """Parses http://address/metrics with prometheus_client's parser: {family name: family}.

    The request runs in a thread because the server under test may answer from
    this test's own event loop."""
    status, ctype, text = await asyncio.to_thread(http_get, f"http://{address}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, name: str, **labels) -> float:
    """Sum of the samples called `name` (e.g. foo_total, foo_count) whose labels match."""
    total = 0.0
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def eventually(fn, what: str, within: float = 60.0):
    """Awaits fn() until it returns something truthy (returned), failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        result = await fn()
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
