"""Runs tasks as processes and never loses track of one.

Each task runs in its own session and process group (so signals to the agent
or its terminal do not reach it and a stop reaches its whole tree), with the
template's command, args, env and working dir, stdout/stderr appended to
files under DATA/tasks/<task>.<attempt>/ that are rotated (copy, truncate)
at a size cap. Exits are observed through a pidfd registered with the event
loop: no thread and no polling per task, and it works as well for tasks
re-adopted after an agent restart, which are no longer our children (their
exit code is then unknown and reported as such).
Stop = SIGTERM to the group, kill_timeout_ms grace (default 5 s), SIGKILL to
the group (and the task's cgroup). Every change is persisted through
StateStore before it is reported, so a restarted agent re-adopts running
tasks and never starts a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import proctree
from agent.cgroups import Cgroups
from agent.clock import SYSTEM_CLOCK, Clock
from agent.state_store import (
    FAILED,
    FAILED_TO_START,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    StateStore,
    TaskRecord,
)
from lepton.v1 import agent_pb2, types_pb2

log = logging.getLogger("lepton.agent.runner")

DEFAULT_KILL_TIMEOUT_MS = 5000
UNKNOWN_EXIT = -1
# Inherited from the agent's environment; the rest comes from the task template.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")

_STATE_PB = {
    RUNNING: types_pb2.TASK_STATE_RUNNING,
    SUCCEEDED: types_pb2.TASK_STATE_SUCCEEDED,
    FAILED: types_pb2.TASK_STATE_FAILED,
    FAILED_TO_START: types_pb2.TASK_STATE_FAILED,
    STOPPED: types_pb2.TASK_STATE_STOPPED,
}

EventSink = Callable[[agent_pb2.TaskEvent], None]


def safe_name(task_id: str, attempt: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id) + f".{attempt}"


def describe_exit(returncode: int) -> tuple[int, str]:
    """Popen returncode -> (exit code like a shell reports it, reason)."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return 128 + sig, f"killed by {name}"
    return returncode, "" if returncode == 0 else f"exited with code {returncode}"


@dataclass
class _Live:
    """Runtime-only companions of a running record (not persisted)."""

    popen: subprocess.Popen | None
    pidfd: int
    exited: asyncio.Event


class Runner:
    def __init__(
        self,
        store: StateStore,
        node_id: str,
        emit: EventSink,
        cgroups: Cgroups | None = None,
        clock: Clock = SYSTEM_CLOCK,
        log_max_bytes: int = 10 * 2**20,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._emit = emit
        self._cgroups = cgroups or Cgroups(None, "cgroups disabled")
        self._clock = clock
        self._log_max = log_max_bytes
        self._records: dict[tuple[str, int], TaskRecord] = {}
        self._live: dict[tuple[str, int], _Live] = {}
        self._stoppers: set[asyncio.Task] = set()
        self.desired_version = 0
        self._dirty = False
        self._save_seq = 0
        self._flusher: asyncio.Task | None = None
        self.tasks_dir = store.data_dir / "tasks"
        self.tasks_dir.mkdir(exist_ok=True)

    # -- queries ---------------------------------------------------------

    def records(self) -> dict[tuple[str, int], TaskRecord]:
        return dict(self._records)

    def running_roots(self) -> dict[tuple[str, int], int]:
        return {k: r.pid for k, r in self._records.items() if r.running}

    def states(self) -> list[agent_pb2.RunningTask]:
        out = []
        for r in self._records.values():
            state = _STATE_PB[r.state]
            if r.running and r.stop_requested:
                state = types_pb2.TASK_STATE_STOPPING
            out.append(
                agent_pb2.RunningTask(
                    task_id=r.task_id,
                    attempt=r.attempt,
                    state=state,
                    pid=r.pid,
                    started_at_ms=r.started_at_ms,
                    exit_code=UNKNOWN_EXIT if r.exit_code is None and not r.running else (r.exit_code or 0),
                    reason=r.reason,
                )
            )
        return out

    # -- lifecycle -------------------------------------------------------

    def adopt(self) -> None:
        """After (re)start: re-adopt recorded tasks that still run; report those that ended meanwhile."""
        state = self._store.load()
        self.desired_version = state.desired_version
        for r in state.tasks or []:
            self._records[r.key] = r
            if not r.running:
                continue
            if r.pid == 0:
                self._find_unrecorded(r)
            if r.pid > 0 and proctree.is_alive(r.pid, r.start_ticks):
                try:
                    self._watch(r, None)
                    log.info("re-adopted task %s attempt %d (pid %d)", r.task_id, r.attempt, r.pid)
                    continue
                except OSError:
                    pass  # gone between the check and pidfd_open
            self._finish(r, None, "ended while the agent was not running; exit code unknown")
        self._save()

    def start(self, a: agent_pb2.TaskAssignment) -> TaskRecord:
        """Starts one assignment. Idempotent: a known (task, attempt) is returned as it is."""
        return self.start_many([a])[0]

    def start_many(self, assignments: list[agent_pb2.TaskAssignment]) -> list[TaskRecord]:
        """Starts a batch of assignments with ONE synchronous state write before
        the forks (not one per task: hundreds of fsyncs on the event loop kept
        the agent from reporting for seconds, and the leader declared it down)."""
        prepared, out = [], []
        for a in assignments:
            key = (a.task_id, a.attempt)
            if key in self._records:
                out.append(self._records[key])
                continue
            r, launch = self._prepare(a)
            out.append(r)
            if launch is not None:
                prepared.append((r, a, *launch))
        if prepared:
            # Persist the intent first: if the agent dies between fork and the
            # next save, adopt() still finds the process (by its LEPTON_TASK_DIR)
            # instead of leaving an orphan that a restart would duplicate.
            self._save_now()
            for r, a, env, cg in prepared:
                self._launch(r, a, env, cg)
        return out

    def _prepare(self, a: agent_pb2.TaskAssignment) -> tuple[TaskRecord, tuple[dict, object] | None]:
        """Records the task and makes its directory and cgroup. Returns the record
        and what _launch needs (env, cgroup), or None when it failed already."""
        t = a.template
        workdir = self.tasks_dir / safe_name(a.task_id, a.attempt)
        workdir.mkdir(parents=True, exist_ok=True)
        r = TaskRecord(
            task_id=a.task_id,
            attempt=a.attempt,
            job_id=a.job_id,
            stdout_path=str(workdir / "stdout.log"),
            stderr_path=str(workdir / "stderr.log"),
            kill_timeout_ms=t.kill_timeout_ms or DEFAULT_KILL_TIMEOUT_MS,
            stop_on_disconnect=t.stop_on_disconnect,
            started_at_ms=self._clock.wall_ms(),
        )
        self._records[(a.task_id, a.attempt)] = r
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update(
            LEPTON_TASK_ID=a.task_id,
            LEPTON_TASK_ATTEMPT=str(a.attempt),
            LEPTON_JOB_ID=a.job_id,
            LEPTON_NODE_ID=self._node_id,
            LEPTON_TASK_DIR=str(workdir),
        )
        env.update(t.env)
        if not t.command:
            return self._failed_to_start(r, "no command in the task template"), None
        try:
            cg = self._cgroups.create(
                safe_name(a.task_id, a.attempt), t.resources.cpu_millis, t.resources.memory_bytes
            )
        except OSError as e:
            cg = None
            log.warning("task %s: cgroup not created (%s); running without limits", a.task_id, e)
        return r, (env, cg)

    def _launch(self, r: TaskRecord, a: agent_pb2.TaskAssignment, env: dict, cg) -> TaskRecord:
        t = a.template
        workdir = Path(r.stdout_path).parent
        try:
            with open(r.stdout_path, "ab") as out, open(r.stderr_path, "ab") as err:
                popen = subprocess.Popen(
                    [t.command, *t.args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=t.working_dir or str(workdir),
                    env=env,
                    start_new_session=True,  # own session + process group
                    close_fds=True,
                )
        except OSError as e:
            if cg is not None:
                Cgroups.remove(cg)
            what = e.filename if e.filename is not None else t.command
            return self._failed_to_start(r, f"{e.strerror or e}: {what}")
        if cg is not None:
            # Moved right after fork: a task that forks within microseconds of
            # starting could leave a child outside its cgroup (Popen has no hook
            # to do it before exec without preexec_fn, unsafe with gRPC threads).
            try:
                Cgroups.add(cg, popen.pid)
                r.cgroup = str(cg)
            except OSError as e:
                log.warning("task %s: not moved into its cgroup: %s", a.task_id, e)
        r.pid = popen.pid
        st = proctree.read_stat(popen.pid)
        r.start_ticks = st.start_ticks if st else 0
        self._watch(r, popen)
        self._save()
        limits = "" if r.cgroup else f"limits not enforced: {self._cgroups.unavailable_reason}"
        self._event(r, agent_pb2.TASK_EVENT_STARTED, reason=limits)
        log.info("started task %s attempt %d (pid %d): %s", r.task_id, r.attempt, r.pid, t.command)
        return r

    def stop(self, key: tuple[str, int], reason: str = "stopped by the controller") -> asyncio.Task | None:
        """Begins stopping a running task (idempotent); returns the task that completes the stop."""
        r = self._records.get(key)
        if r is None or not r.running:
            return None
        if not r.stop_requested:
            r.stop_requested = True
            r.reason = reason
            self._save()
        for s in self._stoppers:
            if s.get_name() == f"stop:{key}":
                return s
        task = asyncio.get_running_loop().create_task(self._stop(r), name=f"stop:{key}")
        self._stoppers.add(task)
        task.add_done_callback(self._stoppers.discard)
        return task

    async def stop_all(self, reason: str) -> None:
        tasks = [t for k in list(self._records) if (t := self.stop(k, reason)) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop(self, r: TaskRecord) -> None:
        live = self._live.get(r.key)
        if live is None:
            return
        self._signal(r, signal.SIGTERM)
        try:
            await asyncio.wait_for(live.exited.wait(), r.kill_timeout_ms / 1000)
            return
        except TimeoutError:
            log.info("task %s ignored SIGTERM for %d ms: SIGKILL", r.task_id, r.kill_timeout_ms)
        self._signal(r, signal.SIGKILL)
        if r.cgroup:
            Cgroups.kill(Path(r.cgroup))
        await live.exited.wait()

    def _signal(self, r: TaskRecord, sig: int) -> None:
        # The task leads its own process group (pgid == pid), so the group outlives
        # the leader only if children linger; signal the group either way.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(r.pid, sig)

    def forget(self, key: tuple[str, int]) -> None:
        r = self._records.get(key)
        if r is None or r.running:
            return
        del self._records[key]
        if r.cgroup:
            Cgroups.remove(r.cgroup)
        self._save()

    def set_desired_version(self, version: int) -> None:
        if version != self.desired_version:
            self.desired_version = version
            self._save()

    def close(self) -> None:
        """Stops watching (agent shutdown); the tasks themselves keep running."""
        if self._dirty or (self._flusher is not None and not self._flusher.done()):
            self._save_now()  # the newest state wins (seq) even if a flush is mid-write
        loop = asyncio.get_event_loop()
        for live in self._live.values():
            with contextlib.suppress(Exception):
                loop.remove_reader(live.pidfd)
            with contextlib.suppress(OSError):
                os.close(live.pidfd)
        self._live.clear()

    # -- logs --------------------------------------------------------------

    def rotate_logs(self) -> None:
        """Copy-then-truncate logs over the cap. The task keeps its O_APPEND fd, so writes go on at 0."""
        for r in self._records.values():
            if not r.running:
                continue
            for path in (r.stdout_path, r.stderr_path):
                try:
                    if os.path.getsize(path) <= self._log_max:
                        continue
                    shutil.copyfile(path, path + ".1")
                    os.truncate(path, 0)
                except OSError:
                    continue

    # -- internals -------------------------------------------------------

    def _find_unrecorded(self, r: TaskRecord) -> None:
        workdir = str(Path(r.stdout_path).parent)
        for pid in proctree.find_by_env("LEPTON_TASK_DIR", workdir):
            st = proctree.read_stat(pid)
            if st is not None and st.session == pid:  # the task's root, not one of its children
                r.pid, r.start_ticks = pid, st.start_ticks
                log.info(
                    "found task %s attempt %d (pid %d) started just before a crash", r.task_id, r.attempt, pid
                )
                return

    def _watch(self, r: TaskRecord, popen: subprocess.Popen | None) -> None:
        fd = os.pidfd_open(r.pid)
        live = _Live(popen, fd, asyncio.Event())
        self._live[r.key] = live
        asyncio.get_running_loop().add_reader(fd, self._on_exit, r.key)

    def _on_exit(self, key: tuple[str, int]) -> None:
        live = self._live.pop(key, None)
        if live is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(live.pidfd)
        os.close(live.pidfd)
        r = self._records[key]
        code = None
        if live.popen is not None:
            code = live.popen.wait()  # readable pidfd: the child has exited, this does not block
        self._finish(r, code, "" if code is not None else "exit code unknown (task was re-adopted)")
        self._save()
        live.exited.set()

    def _finish(self, r: TaskRecord, returncode: int | None, unknown_reason: str) -> None:
        r.finished_at_ms = self._clock.wall_ms()
        if returncode is None:
            r.exit_code = None
            why = unknown_reason
        else:
            r.exit_code, why = describe_exit(returncode)
        if r.stop_requested:
            r.state = STOPPED
            r.reason = f"{r.reason}; {why}" if why and r.reason else (r.reason or why)
            self._event(r, agent_pb2.TASK_EVENT_STOPPED, r.exit_code, r.reason)
        else:
            r.state = SUCCEEDED if r.exit_code == 0 else FAILED
            r.reason = why
            self._event(r, agent_pb2.TASK_EVENT_EXITED, r.exit_code, why)
        log.info("task %s attempt %d %s (%s)", r.task_id, r.attempt, r.state, r.reason or "exit 0")

    def _failed_to_start(self, r: TaskRecord, reason: str) -> TaskRecord:
        r.state = FAILED_TO_START
        r.reason = reason
        r.finished_at_ms = self._clock.wall_ms()
        self._save()
        self._event(r, agent_pb2.TASK_EVENT_FAILED_TO_START, reason=reason)
        log.warning("task %s attempt %d failed to start: %s", r.task_id, r.attempt, reason)
        return r

    def _event(self, r: TaskRecord, kind: int, exit_code: int | None = 0, reason: str = "") -> None:
        self._emit(
            agent_pb2.TaskEvent(
                task_id=r.task_id,
                attempt=r.attempt,
                type=kind,
                exit_code=UNKNOWN_EXIT if exit_code is None else exit_code,
                reason=reason,
                time_ms=self._clock.wall_ms(),
                pid=r.pid,
            )
        )

    def _save(self) -> None:
        """Schedules a state write. Writes are coalesced and fsynced off the
        event loop, so a burst of starts, exits and stops costs one write, and
        reports keep flowing meanwhile. Losing the last write in a crash is
        safe: adopt() finds tasks by pid or by their LEPTON_TASK_DIR."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save_now()
            return
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="state-flush")

    def _save_now(self) -> None:
        """A synchronous write, for the places that must be on disk before they go on."""
        self._save_seq += 1
        self._dirty = False
        data = self._store.encode(self.desired_version, list(self._records.values()))
        self._store.write(data, self._save_seq)

    async def _flush(self) -> None:
        while self._dirty:
            self._dirty = False
            self._save_seq += 1
            # Encode on the loop (the records change there); write in a thread.
            data = self._store.encode(self.desired_version, list(self._records.values()))
            try:
                await asyncio.to_thread(self._store.write, data, self._save_seq)
            except OSError as e:
                log.error("could not write the agent state file: %s", e)

    async def flush(self) -> None:
        """Waits until every scheduled state write is on disk."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
