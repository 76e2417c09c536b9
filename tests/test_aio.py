"""lepton/aio.py: choosing the event loop, and a clear error for a bad choice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from lepton import aio


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_resolve_and_run_on_each_loop(monkeypatch) -> None:
    monkeypatch.delenv(aio.ENV, raising=False)
    assert aio.resolve("asyncio") == "asyncio"
    assert aio.run(_loop_type(), loop="asyncio").startswith("asyncio")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert aio.resolve() == "asyncio"
        with pytest.raises(ValueError, match="not installed"):
            aio.resolve("uvloop")
    else:
        assert aio.resolve() == "uvloop"
        assert aio.run(_loop_type()).startswith("uvloop")
    monkeypatch.setenv(aio.ENV, "asyncio")
    assert aio.resolve() == "asyncio"


def test_bad_choice_is_a_clear_error(monkeypatch) -> None:
    with pytest.raises(ValueError, match="'tokio' is not one of auto, asyncio, uvloop"):
        aio.resolve("tokio")
    coro = _loop_type()
    with pytest.raises(ValueError):
        aio.run(coro, loop="tokio")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


@pytest.mark.parametrize("module", ["controller.main", "agent.main"])
def test_processes_refuse_a_bad_event_loop_with_exit_2(module, tmp_path) -> None:
    env = {**os.environ, aio.ENV: "tokio"}
    args = ["--data-dir", str(tmp_path / "d")]
    if module == "controller.main":
        args += ["--dev"]
    else:
        args += ["--controllers", "127.0.0.1:1", "--node-id", "n1"]
    p = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert "event loop 'tokio' is not one of" in p.stderr
    assert "Traceback" not in p.stderr
