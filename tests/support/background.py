"""An in-process controller (Raft stand-in) served from its own event loop in a background thread.

Property-based tests (hypothesis) are synchronous: they call the controller
over real gRPC on loopback with blocking stubs while it runs here, and use
`call()` to look at its state on its own loop between examples.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from tests.support.inproc import inproc_controller


class BackgroundController:
    def __init__(self, tmp_path, **overrides) -> None:
        self._tmp = tmp_path
        self._overrides = overrides
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bg-controller", daemon=True)
        self.handle = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with inproc_controller(self._tmp, **self._overrides) as h:
            self.handle = h
            self.loop = asyncio.get_running_loop()
            for _ in range(3000):  # the leader announces itself first (two proposals)
                if any(m.id == "c1" for m in h.state.members()):
                    break
                await asyncio.sleep(0.01)
            self._ready.set()
            await self._stop.wait()

    @property
    def address(self) -> str:
        return self.handle.server.address

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Runs fn(handle) on the controller's loop and returns its result."""

        async def run():
            return fn(self.handle)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def __enter__(self) -> BackgroundController:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"background controller did not start: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
