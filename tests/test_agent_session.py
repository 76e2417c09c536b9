"""Integration: a real lepton-agent process against stand-in controllers over real gRPC on loopback.

Covers registration (Hello contents), reports, running tasks and reporting
exit codes, failed starts, NotLeader redirects, reconnecting after the
controller goes away, stop with SIGKILL after the grace period, kill -9 of the
agent (no lost or duplicated task), the disconnect policy, and SIGTERM of the
agent (tasks left running, or drained). Every test kills what it started:
agents by pid, and their tasks by the LEPTON_TASK_DIR under its data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from agent import proctree
from agent.standin import StandInController, assignment
from lepton.v1 import agent_pb2, types_pb2

WAIT = 30.0  # generous: the CPU is shared with other test runs


def task_pids(data_dir: Path, task_id: str | None = None) -> list[int]:
    """Live (non-zombie) task root processes started by the agent with this data dir."""
    prefix = f"LEPTON_TASK_DIR={data_dir}/".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if not any(e.startswith(prefix) for e in env):
            continue
        if task_id is not None and f"LEPTON_TASK_ID={task_id}".encode() not in env:
            continue
        st = proctree.read_stat(int(entry))
        if st is not None and st.state not in ("Z", "X") and st.session == st.pid:
            out.append(st.pid)
    return out


class Agents:
    """Starts agent processes and, at teardown, kills them and every task they started."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[asyncio.subprocess.Process] = []
        self.dirs: set[Path] = set()

    async def start(self, controllers: str, *extra: str, data_dir: Path | None = None, node_id: str = "n1"):
        data_dir = data_dir or self.tmp / f"agent-{node_id}"
        self.dirs.add(data_dir)
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "--controllers",
            controllers,
            "--node-id",
            node_id,
            "--data-dir",
            str(data_dir),
            "--report-interval",
            "200ms",
            "--backoff-max",
            "500ms",
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    async def cleanup(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for d in self.dirs:
            for pid in task_pids(d):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
async def agents(tmp_path):
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        await a.cleanup()


@pytest.fixture
async def controller():
    c = StandInController()
    await c.start()
    try:
        yield c
    finally:
        await c.stop(None)


def events_of(c: StandInController, task_id: str, kind: int) -> list[agent_pb2.TaskEvent]:
    return [e for e in c.events if e.task_id == task_id and e.type == kind]


async def test_registers_reports_runs_and_reports_exit(controller, agents, tmp_path):
    await agents.start(
        controller.address, "--label", "zone=a", "--label", "rack=r1", "--cpus", "100", "--memory", "1Ti"
    )
    await controller.wait_for(lambda: controller.hellos, WAIT)
    hello = controller.hellos[0]
    assert hello.node_id == "n1"
    assert dict(hello.labels) == {"zone": "a", "rack": "r1"}
    assert hello.capacity.cpu_millis == 100_000
    assert hello.capacity.memory_bytes == 2**40
    assert hello.capacity.network_mbps > 0
    assert hello.hostname and hello.agent_version
    assert list(hello.tasks) == []

    await controller.wait_for(lambda: len(controller.reports) >= 2, WAIT)
    usage = controller.reports[-1].usage
    assert usage.memory_total_bytes > 0 and 0 <= usage.cpu_percent <= 100
    assert all(i.name != "lo" for i in usage.interfaces)

    controller.set_desired(
        [
            assignment("ok.0", "sh", "-c", "echo out; echo err >&2; exit 0"),
            assignment("bad.0", "sh", "-c", "exit 7"),
        ]
    )
    await controller.wait_for(
        lambda: (
            events_of(controller, "ok.0", agent_pb2.TASK_EVENT_EXITED)
            and events_of(controller, "bad.0", agent_pb2.TASK_EVENT_EXITED)
        ),
        WAIT,
    )
    assert events_of(controller, "ok.0", agent_pb2.TASK_EVENT_STARTED)
    assert events_of(controller, "ok.0", agent_pb2.TASK_EVENT_EXITED)[0].exit_code == 0
    assert events_of(controller, "bad.0", agent_pb2.TASK_EVENT_EXITED)[0].exit_code == 7
    logdir = tmp_path / "agent-n1" / "tasks" / "ok.0.1"
    assert (logdir / "stdout.log").read_text() == "out\n"
    assert (logdir / "stderr.log").read_text() == "err\n"

    # Reports carry the final states, and the desired version applied.
    def finished_states():
        r = controller.reports[-1]
        states = {t.task_id: t for t in r.task_states}
        return (
            r.desired_version == 1
            and states.get("bad.0")
            and states["bad.0"].state == types_pb2.TASK_STATE_FAILED
        )

    await controller.wait_for(finished_states, WAIT)
    # Same set again: idempotent, nothing restarts.
    n_started = len([e for e in controller.events if e.type == agent_pb2.TASK_EVENT_STARTED])
    controller.set_desired(controller.desired.tasks)
    await controller.wait_for(lambda: controller.reports[-1].desired_version == 2, WAIT)
    assert len([e for e in controller.events if e.type == agent_pb2.TASK_EVENT_STARTED]) == n_started


async def test_failed_to_start_has_a_reason(controller, agents):
    await agents.start(controller.address)
    bad_cwd = assignment("cwd.0", "true")
    bad_cwd.template.working_dir = "/no/such/dir"
    controller.set_desired([assignment("nope.0", "/no/such/binary"), bad_cwd])
    await controller.wait_for(
        lambda: (
            events_of(controller, "nope.0", agent_pb2.TASK_EVENT_FAILED_TO_START)
            and events_of(controller, "cwd.0", agent_pb2.TASK_EVENT_FAILED_TO_START)
        ),
        WAIT,
    )
    assert (
        "/no/such/binary" in events_of(controller, "nope.0", agent_pb2.TASK_EVENT_FAILED_TO_START)[0].reason
    )
    assert "No such file" in events_of(controller, "cwd.0", agent_pb2.TASK_EVENT_FAILED_TO_START)[0].reason


async def test_stop_kills_a_task_that_ignores_sigterm(controller, agents, tmp_path):
    await agents.start(controller.address)
    stubborn = assignment(
        "stubborn.0", "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done", kill_timeout_ms=500
    )
    controller.set_desired([stubborn, assignment("polite.0", "sleep", "3600")])
    await controller.wait_for(lambda: len(task_pids(tmp_path / "agent-n1")) == 2, WAIT)
    await controller.wait_for(
        lambda: (tmp_path / "agent-n1/tasks/stubborn.0.1/stdout.log").read_text() == "ready\n", WAIT
    )
    controller.set_desired([])
    await controller.wait_for(
        lambda: (
            events_of(controller, "stubborn.0", agent_pb2.TASK_EVENT_STOPPED)
            and events_of(controller, "polite.0", agent_pb2.TASK_EVENT_STOPPED)
        ),
        WAIT,
    )
    assert (
        events_of(controller, "stubborn.0", agent_pb2.TASK_EVENT_STOPPED)[0].exit_code == 128 + signal.SIGKILL
    )
    assert (
        events_of(controller, "polite.0", agent_pb2.TASK_EVENT_STOPPED)[0].exit_code == 128 + signal.SIGTERM
    )
    assert task_pids(tmp_path / "agent-n1") == []


async def test_new_attempt_replaces_the_old_one(controller, agents, tmp_path):
    await agents.start(controller.address)
    controller.set_desired([assignment("svc.0", "sleep", "3600", attempt=1)])
    await controller.wait_for(lambda: events_of(controller, "svc.0", agent_pb2.TASK_EVENT_STARTED), WAIT)
    controller.set_desired([assignment("svc.0", "sleep", "3600", attempt=2)])
    await controller.wait_for(
        lambda: (
            [e for e in events_of(controller, "svc.0", agent_pb2.TASK_EVENT_STARTED) if e.attempt == 2]
            and [e for e in events_of(controller, "svc.0", agent_pb2.TASK_EVENT_STOPPED) if e.attempt == 1]
        ),
        WAIT,
    )
    # A stale (older) version is ignored: attempt 2 keeps running.
    controller.set_desired([], version=1)
    controller.set_desired([assignment("svc.0", "sleep", "3600", attempt=2)], version=3)
    await controller.wait_for(lambda: controller.reports[-1].desired_version == 3, WAIT)
    assert len(task_pids(tmp_path / "agent-n1", "svc.0")) == 1
    assert not [e for e in events_of(controller, "svc.0", agent_pb2.TASK_EVENT_STOPPED) if e.attempt == 2]


async def test_kill9_agent_restart_neither_loses_nor_duplicates(controller, agents, tmp_path):
    data = tmp_path / "agent-n1"
    p = await agents.start(controller.address)
    controller.set_desired(
        [assignment("long.0", "sleep", "3600"), assignment("short.0", "sh", "-c", "sleep 2; exit 5")]
    )
    await controller.wait_for(lambda: len(task_pids(data)) == 2, WAIT)
    (long_pid,) = task_pids(data, "long.0")
    p.kill()  # SIGKILL: no chance to clean up
    await p.wait()
    # While the agent is down, short.0 ends; nobody can collect its exit code.
    await asyncio.wait_for(_until(lambda: not task_pids(data, "short.0")), WAIT)
    assert task_pids(data, "long.0") == [long_pid]

    controller.hellos.clear()
    await agents.start(controller.address)
    await controller.wait_for(lambda: controller.hellos, WAIT)
    hello = {t.task_id: t for t in controller.hellos[0].tasks}
    assert hello["long.0"].state == types_pb2.TASK_STATE_RUNNING and hello["long.0"].pid == long_pid
    assert hello["short.0"].state == types_pb2.TASK_STATE_FAILED
    assert "exit code unknown" in hello["short.0"].reason
    assert controller.hellos[0].desired_version == 1
    await controller.wait_for(
        lambda: [
            e for e in events_of(controller, "short.0", agent_pb2.TASK_EVENT_EXITED) if "unknown" in e.reason
        ],
        WAIT,
    )
    # The controller re-sends the same set: nothing is started twice.
    controller.set_desired(controller.desired.tasks)
    await controller.wait_for(
        lambda: controller.reports and controller.reports[-1].desired_version == 2, WAIT
    )
    assert task_pids(data, "long.0") == [long_pid]
    assert len([e for e in events_of(controller, "long.0", agent_pb2.TASK_EVENT_STARTED)]) == 1
    # And the re-adopted task can still be stopped.
    controller.set_desired([])
    await controller.wait_for(lambda: events_of(controller, "long.0", agent_pb2.TASK_EVENT_STOPPED), WAIT)
    assert task_pids(data) == []
    state = json.loads((data / "state.json").read_text())
    assert {t["task_id"] for t in state["tasks"]} <= {"long.0", "short.0"}


async def test_follows_not_leader_redirect(agents):
    leader = StandInController("leader")
    await leader.start()
    follower = StandInController("follower", redirect_to=leader.address)
    await follower.start()
    try:
        await agents.start(follower.address)
        await leader.wait_for(lambda: leader.hellos, WAIT)
        assert follower.rejected >= 1
        await leader.wait_for(lambda: leader.reports, WAIT)
    finally:
        await leader.stop(None)
        await follower.stop(None)


async def test_reconnects_to_the_next_controller_after_leader_change(agents, tmp_path):
    a = StandInController("a")
    b = StandInController("b")
    await a.start()
    await b.start()
    try:
        # b starts as a follower pointing at a; a is the leader.
        b.redirect_to = a.address
        await agents.start(f"{a.address},{b.address}")
        a.set_desired([assignment("keep.0", "sleep", "3600")])
        await a.wait_for(lambda: events_of(a, "keep.0", agent_pb2.TASK_EVENT_STARTED), WAIT)
        # Leader change: a goes away, b becomes leader with the same desired set.
        b.redirect_to = ""
        b.set_desired(a.desired.tasks, version=a.desired.version + 1)
        await a.stop(None)
        await b.wait_for(lambda: b.hellos and b.reports, WAIT)
        hello = b.hellos[-1]
        assert [t.task_id for t in hello.tasks if t.state == types_pb2.TASK_STATE_RUNNING] == ["keep.0"]
        await b.wait_for(lambda: b.reports[-1].desired_version == a.desired.version + 1, WAIT)
        assert len(task_pids(tmp_path / "agent-n1", "keep.0")) == 1
    finally:
        await a.stop(None)
        await b.stop(None)


async def test_disconnect_stops_only_marked_tasks_and_remembers(controller, agents, tmp_path):
    data = tmp_path / "agent-n1"
    await agents.start(controller.address, "--disconnect-timeout", "1s")
    controller.set_desired(
        [
            assignment("fragile.0", "sleep", "3600", stop_on_disconnect=True),
            assignment("sturdy.0", "sleep", "3600"),
        ]
    )
    await controller.wait_for(lambda: len(task_pids(data)) == 2, WAIT)
    address = controller.address
    await controller.stop(None)
    await asyncio.wait_for(_until(lambda: not task_pids(data, "fragile.0")), WAIT)
    assert len(task_pids(data, "sturdy.0")) == 1
    # Back online (same address): the agent tells what happened while it was cut off.
    port = int(address.rsplit(":", 1)[1])
    back = StandInController("back")
    await back.start(port=port)
    try:
        await back.wait_for(lambda: back.hellos, WAIT)
        states = {t.task_id: t for t in back.hellos[0].tasks}
        assert states["fragile.0"].state == types_pb2.TASK_STATE_STOPPED
        assert "disconnected" in states["fragile.0"].reason
        assert states["sturdy.0"].state == types_pb2.TASK_STATE_RUNNING
        await back.wait_for(lambda: events_of(back, "fragile.0", agent_pb2.TASK_EVENT_STOPPED), WAIT)
    finally:
        await back.stop(None)


@pytest.mark.parametrize("drain", [False, True])
async def test_sigterm_leaves_tasks_running_unless_draining(controller, agents, tmp_path, drain):
    data = tmp_path / "agent-n1"
    p = await agents.start(controller.address, *(["--drain-on-exit"] if drain else []))
    controller.set_desired([assignment("t.0", "sleep", "3600")])
    await controller.wait_for(lambda: len(task_pids(data)) == 1, WAIT)
    p.terminate()
    assert await asyncio.wait_for(p.wait(), WAIT) == 0
    if drain:
        assert task_pids(data) == []
        assert events_of(controller, "t.0", agent_pb2.TASK_EVENT_STOPPED)
    else:
        assert len(task_pids(data)) == 1


async def _until(predicate, every: float = 0.05) -> None:
    # The process table has no change notification: poll it.
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(every)


def _client_socket_user_timeouts(server_port: int) -> list[int]:
    """TCP_USER_TIMEOUT of this process's TCP sockets connected to server_port (the client side)."""
    import socket

    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            tcp = s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
            if tcp and s.getpeername()[1] == server_port:
                out.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        except OSError:
            pass
        finally:
            s.close()
    return out


async def test_in_process_agent_sets_a_dead_peer_timeout(controller, tmp_path):
    """run_agent() in this loop (the controller's --dev way); its stream drops a silent peer after --peer-timeout."""
    from agent.main import AgentConfig, run_agent

    cfg = AgentConfig.from_args(
        ["--controllers", controller.address, "--data-dir", str(tmp_path / "inproc"), "--peer-timeout", "7s"],
        env={},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(cfg, stop))
    try:
        await controller.wait_for(lambda: controller.reports, WAIT)
        port = int(controller.address.rsplit(":", 1)[1])
        assert _client_socket_user_timeouts(port) == [7000]
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
