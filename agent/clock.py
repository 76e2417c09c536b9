"""The agent's injectable clock: monotonic seconds for rates and timers, wall milliseconds for the wire.

Everything that measures intervals (sampler rates, disconnect timer, backoff)
reads `Clock.monotonic()` so tests can substitute a fake; wall time only
stamps messages.
"""

from __future__ import annotations

import time


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK = Clock()
