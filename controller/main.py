"""`lepton-controller`: the process entry point of a controller replica.

Parses the configuration (flags > LEPTON_* env > YAML file), sets up logging
to stderr, runs the ControllerServer (or, with --dev, a one-replica cluster
with a local agent) until SIGTERM/SIGINT and shuts down gracefully. Bad
settings print one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from controller.config import ConfigError, ControllerConfig, load
from lepton.errors import LeptonError

log = logging.getLogger("lepton.controller")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)


async def run(cfg: ControllerConfig, stop: asyncio.Event | None = None) -> None:
    """Runs one replica until `stop` is set (or a signal arrives)."""
    from controller.server import ControllerServer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ControllerServer(cfg)
    try:
        await server.start()
        # Tests and scripts started with --listen ...:0 learn the real port from this line.
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
    setup_logging(cfg.log_level)
    try:
        if cfg.dev:
            from controller.dev import run_dev

            asyncio.run(run_dev(cfg))
        else:
            asyncio.run(run(cfg))
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
