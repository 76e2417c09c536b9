"""`lepton-controller`: the process entry point of a controller replica.

Parses the configuration (flags > LEPTON_* env > YAML file), sets up logging
to stderr, runs the ControllerServer (or, with --dev, a one-replica cluster
with a local agent) until SIGTERM/SIGINT and shuts down gracefully. Bad
settings print one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from controller.config import ConfigError, ControllerConfig, load
from lepton import aio
from lepton.errors import LeptonError

log = logging.getLogger("lepton.controller")

# The leader holds many long-lived objects (a stream, its session and live state
# per agent). With CPython's default thresholds (700, 10, 10) the collector ran
# full collections of all of them every few seconds at 5,000 agents, each a
# 90-250 ms pause of the event loop that found next to nothing to free: that was
# the p99 of report handling (bench/agent_scale.py: p99 180-280 ms, 24 ms with
# these), and such pauses delay Raft heartbeats too.
GC_THRESHOLDS = (50_000, 20, 100)


def setup_logging(level: str, fmt: str = "text") -> None:
    from controller.observability import logs

    logs.setup(level, fmt)


async def run(cfg: ControllerConfig, stop: asyncio.Event | None = None) -> None:
    """Runs one replica until `stop` is set (or a signal arrives)."""
    from controller.server import ControllerServer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ControllerServer(cfg)
    from controller.observability import logs

    # Every line says which replica wrote it and in which Raft term.
    logs.add_context(
        {"controller": cfg.id},
        {"term": lambda: server.replica.node.term if server.replica is not None else None},
    )
    try:
        await server.start()
        # Tests and scripts started with --listen ...:0 learn the real port from this line.
        if cfg.log_format == "json":
            # Keep stderr one JSON object per line; the message text is the same.
            log.info("lepton-controller %s listening on %s", cfg.id, server.address)
        else:
            print(f"lepton-controller {cfg.id} listening on {server.address}", file=sys.stderr, flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load(argv)
    except ConfigError as e:
        print(f"lepton-controller: error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.restore is not None and cfg.dev:
        print("lepton-controller: error: --restore cannot be combined with --dev", file=sys.stderr)
        return 2
    if cfg.restore is not None:
        from controller.backup import seed_data_dir

        try:
            seed_data_dir(cfg.restore, cfg.data_dir, cfg.id, cfg.peers, fsync=cfg.fsync)
        except (LeptonError, OSError) as e:
            print(f"lepton-controller: error: cannot restore: {e}", file=sys.stderr)
            return 1
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        if cfg.dev:
            from controller.dev import run_dev

            aio.run(run_dev(cfg), loop=cfg.event_loop)
        else:
            aio.run(run(cfg), loop=cfg.event_loop)
    except KeyboardInterrupt:
        pass
    except LeptonError as e:
        print(f"lepton-controller: error: {e}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as e:
        print(f"lepton-controller: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
