"""lepton-agent entry points; the one place that wires the agent together.

Command line (console script `lepton-agent`, or `python -m agent`):

    lepton-agent --controllers 127.0.0.1:7001,127.0.0.1:7002 --node-id n1 \\
        --data-dir /var/lib/lepton-agent --label zone=a --report-interval 1s \\
        [--cpus 100 --memory 1Ti --network 10G --gpus 0 --reserve-cpus 1 --reserve-memory 2Gi] \\
        [--config agent.yaml] [--disconnect-timeout 30s] [--drain-on-exit]

In-process (e.g. the controller's --dev mode runs agents inside its own loop):

    from agent.main import AgentConfig, run_agent
    cfg = AgentConfig.from_args(["--controllers", "127.0.0.1:7001", "--node-id", "dev-1",
                                 "--data-dir", "/tmp/dev-1", "--cpus", "8"])
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(cfg, stop))   # returns after stop.set()

run_agent returns when `stop` is set: tasks keep running unless the config
says drain_on_exit. It never installs signal handlers (main() does).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import signal
import socket
import sys

import lepton
from agent import capacity, reconciler
from agent.cgroups import Cgroups
from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import AgentConfig, ConfigError
from agent.gpu import GpuProbe
from agent.runner import Runner
from agent.sampler import Sampler
from agent.session import Session
from agent.state_store import StateStore
from lepton import aio
from lepton.v1 import agent_pb2

__all__ = ["Agent", "AgentConfig", "main", "run_agent"]

log = logging.getLogger("lepton.agent")

LOG_ROTATE_EVERY = 10  # reports between log size checks


class Agent:
    """Owns one of each part; `run(stop)` drives them until stop is set."""

    def __init__(self, config: AgentConfig, clock: Clock = SYSTEM_CLOCK, nvml=None) -> None:
        if not config.hostname or not config.address:
            # An AgentConfig built directly (not via from_args), e.g. by the controller's --dev mode.
            host = config.hostname or socket.gethostname()
            config = config.with_(hostname=host, address=config.address or host)
        self.config = config
        self._clock = clock
        self.store = StateStore(config.data_dir)
        self.node_id = self.store.node_id(config.node_id)
        if config.enable_gpu:
            self.gpu = GpuProbe.open(nvml)
        else:
            self.gpu = GpuProbe()
        if config.enable_cgroups:
            self.cgroups = Cgroups.detect()
        else:
            self.cgroups = Cgroups(None, "cgroups disabled by config")
        if not self.cgroups.available:
            log.warning("task limits not enforced: %s", self.cgroups.unavailable_reason)
        found = capacity.detect(self.gpu.count(), self.gpu.memory_per_gpu())
        self.capacity, self.reserve = capacity.fingerprint(config, found)
        self.sampler = Sampler(clock, self.gpu, disk_path=str(config.data_dir))
        self.session = Session(config, self._hello, self._report, self._apply_desired, clock)
        self.runner = Runner(
            self.store, self.node_id, self.session.emit, self.cgroups, clock, config.log_max_bytes
        )
        self._reports = 0
        self._acted_on_disconnect = False

    # -- messages ------------------------------------------------------------

    def _hello(self) -> agent_pb2.Hello:
        hello = agent_pb2.Hello(
            node_id=self.node_id,
            hostname=self.config.hostname,
            address=self.config.address,
            capacity=self.capacity,
            reserve=self.reserve,
            labels=dict(self.config.labels),
            gpus=self.gpu.static(),
            tasks=self.runner.states(),
            agent_version=lepton.__version__,
            desired_version=self.runner.desired_version,
        )
        return hello

    def _report(self) -> agent_pb2.Report:
        self._reports += 1
        if self._reports % LOG_ROTATE_EVERY == 0:
            self.runner.rotate_logs()
        usage, tasks = self.sampler.sample(self.runner.running_roots())
        return agent_pb2.Report(
            time_ms=usage.time_ms,
            usage=usage,
            tasks=tasks,
            task_states=self.runner.states(),
            desired_version=self.runner.desired_version,
        )

    def _apply_desired(self, desired: agent_pb2.DesiredTasks) -> None:
        if not reconciler.accept_version(self.runner.desired_version, desired.version):
            log.warning(
                "ignoring desired set version %d: already applied %d",
                desired.version,
                self.runner.desired_version,
            )
            return
        by_key = {(a.task_id, a.attempt): a for a in desired.tasks}
        have = {k: reconciler.Have(running=r.running) for k, r in self.runner.records().items()}
        plan = reconciler.diff(by_key, have)
        # Recorded first so that the one synchronous write before the forks
        # carries it; equal versions re-apply harmlessly after a crash.
        self.runner.set_desired_version(desired.version)
        for key in plan.stop:
            self.runner.stop(key, "not in the desired set")
        self.runner.start_many([by_key[key] for key in plan.start])
        for key in plan.forget:
            self.runner.forget(key)
        if not plan.empty:
            log.info(
                "desired set v%d: start %d, stop %d, forget %d",
                desired.version,
                len(plan.start),
                len(plan.stop),
                len(plan.forget),
            )
        self.session.trigger_report()

    # -- loops -----------------------------------------------------------

    async def _disconnect_watch(self) -> None:
        """Stops stop_on_disconnect tasks once per outage longer than the timeout; forgets nothing."""
        period = min(1.0, self.config.disconnect_timeout / 4)
        while True:
            await asyncio.sleep(period)
            since = self.session.disconnected_since
            if since is None:
                self._acted_on_disconnect = False
                continue
            if self._acted_on_disconnect or self._clock.monotonic() - since < self.config.disconnect_timeout:
                continue
            self._acted_on_disconnect = True
            victims = [r.key for r in self.runner.records().values() if r.running and r.stop_on_disconnect]
            log.warning(
                "no controller for %.0fs: stopping %d stop_on_disconnect task(s); others keep running",
                self.config.disconnect_timeout,
                len(victims),
            )
            for key in victims:
                self.runner.stop(key, "disconnected from every controller")

    async def run(self, stop: asyncio.Event) -> None:
        self.runner.adopt()
        try:
            async with asyncio.TaskGroup() as tg:
                session = tg.create_task(self.session.run(), name="agent-session")
                watch = tg.create_task(self._disconnect_watch(), name="agent-disconnect-watch")
                stopping = tg.create_task(stop.wait(), name="agent-stop")
                await asyncio.wait({stopping, session}, return_when=asyncio.FIRST_COMPLETED)
                if not stopping.done():
                    # The session only ends when cancelled: anything else is a bug, and
                    # an agent that silently stops talking to its controller is worse
                    # than one that exits (and gets restarted by its supervisor).
                    stopping.cancel()
                    watch.cancel()
                    raise RuntimeError(f"controller session ended unexpectedly: {session!r}")
                if self.config.drain_on_exit:
                    log.info("draining: stopping every task before exit")
                    await self.runner.stop_all("agent shut down with --drain-on-exit")
                    # Give the writer a moment to deliver the STOPPED events.
                    await asyncio.sleep(min(1.0, self.session.report_interval))
                self.session.closing = True
                session.cancel()
                watch.cancel()
        finally:
            self.runner.close()
            self.gpu.close()
        log.info("agent stopped (tasks %s)", "stopped" if self.config.drain_on_exit else "left running")


async def run_agent(config: AgentConfig, stop: asyncio.Event, clock: Clock = SYSTEM_CLOCK) -> None:
    """Runs an agent inside the caller's event loop until `stop` is set."""
    await _run(Agent(config, clock), stop)


async def _run(agent: Agent, stop: asyncio.Event) -> None:
    """agent.run(stop), with the /metrics endpoint around it when --metrics-listen is set."""
    server = None
    if agent.config.metrics_listen:
        from agent import metrics  # prometheus_client only when asked for: the footprint matters

        server = await metrics.serve(agent, agent.config.metrics_listen)
    try:
        await agent.run(stop)
    finally:
        if server is not None:
            await server.stop()


def _dump_tasks() -> None:
    """kill -USR2 <agent>: every asyncio task's stack to stderr (where is it waiting?)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack()
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames) or "(not started)"
        print(f"task {task.get_name()}: {where}", file=sys.stderr)


async def _serve(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    agent = Agent(config)
    if not config.node_id:  # a generated id is known only now (a configured one: see main())
        from controller.observability import logs

        logs.add_context({"node_id": agent.node_id})
    await _run(agent, stop)


def main(argv: list[str] | None = None) -> int:
    try:
        config = AgentConfig.from_args(argv)
    except ConfigError as e:
        print(f"lepton-agent: error: {e}", file=sys.stderr)
        return 2
    # kill -USR1 <agent> dumps every thread's stack to stderr: cheap insurance for field debugging.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from controller.observability import logs  # stdlib-only module (text or JSON lines)

    logs.setup(config.log_level.upper(), config.log_format)
    if config.node_id:
        logs.add_context({"node_id": config.node_id})  # every line says which node wrote it
    try:
        aio.run(_serve(config), loop=config.event_loop)
    except OSError as e:  # e.g. data dir not writable
        print(f"lepton-agent: error: {e}", file=sys.stderr)
        return 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
