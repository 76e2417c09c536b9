"""Which asyncio event loop Lepton's processes run on, and running a coroutine on it.

uvloop (libuv) when it is installed, else the standard library's loop. Our
servers spend much of their time in the loop's own machinery (callbacks,
futures, timers, socket readiness) around gRPC calls; uvloop does that in C,
which measured about 10 % more Raft commits per second in
bench/raft_bench.py. Nothing in Lepton depends on uvloop's behaviour:
`--event-loop asyncio` (or `LEPTON_EVENT_LOOP=asyncio`) on lepton-controller
or kvdemo runs the same code on the standard loop. lepton-agent defaults to
the standard loop: it is not throughput-bound, and uvloop would cost it
about 2 MB of RSS. The test
suite runs in-process servers on the standard loop and spawned processes on
the default (uvloop), and one Raft process test on each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "asyncio", "uvloop")
ENV = "LEPTON_EVENT_LOOP"


def _uvloop():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def resolve(pref: str | None = None) -> str:
    """'asyncio' or 'uvloop': `pref`, else $LEPTON_EVENT_LOOP, else auto (uvloop when installed)."""
    choice = (pref or os.environ.get(ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"event loop {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "uvloop" if _uvloop() is not None else "asyncio"
    if choice == "uvloop" and _uvloop() is None:
        raise ValueError("event loop 'uvloop' was asked for but uvloop is not installed (pip install uvloop)")
    return choice


def parse_setting(text: str) -> str:
    """A configured event loop choice, normalised; ValueError (with the reason) when unusable here."""
    choice = str(text).strip().lower()
    resolve(choice)
    return choice


def describe(pref: str | None = None) -> str:
    name = resolve(pref)
    if name == "uvloop":
        return f"uvloop {_uvloop().__version__}"
    return "asyncio (standard library)"


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """asyncio.run(main) on the loop resolve(loop) picks."""
    try:
        name = resolve(loop)
    except ValueError:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    factory = _uvloop().new_event_loop if name == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
