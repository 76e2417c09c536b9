"""What the agent runs, on disk: JSON in the data dir, replaced atomically (write, fsync, rename).

After the agent is killed (even with SIGKILL) and restarted it reads this
back to re-adopt the tasks that still run, and to report those that ended
meanwhile. A process is identified by (pid, start_ticks) so a reused pid is
never taken for a task. The node id lives in its own small file so it stays
stable even if the task state is ever discarded. JSON only, never pickle.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger("lepton.agent.state")

FORMAT = 1

# Record states (strings, so the file reads well when debugging a node).
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
STOPPED = "stopped"
FAILED_TO_START = "failed_to_start"


@dataclass
class TaskRecord:
    task_id: str
    attempt: int
    state: str = RUNNING
    pid: int = 0
    start_ticks: int = 0
    started_at_ms: int = 0
    finished_at_ms: int = 0
    exit_code: int | None = None
    reason: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    kill_timeout_ms: int = 5000
    stop_on_disconnect: bool = False
    stop_requested: bool = False
    cgroup: str = ""
    job_id: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @classmethod
    def from_json(cls, d: dict) -> TaskRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class AgentState:
    desired_version: int = 0
    tasks: list[TaskRecord] | None = None


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself must survive a power cut too.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._path = self.data_dir / "state.json"
        self._lock = threading.Lock()
        self._written_seq = 0

    def node_id(self, configured: str = "") -> str:
        """The configured id (remembered), else the remembered one, else a new one (remembered)."""
        path = self.data_dir / "node_id"
        try:
            saved = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            saved = ""
        if configured:
            if saved and saved != configured:
                log.warning("node id changes from %s to %s (configured)", saved, configured)
            if saved != configured:
                atomic_write(path, configured.encode() + b"\n")
            return configured
        if saved:
            return saved
        new = "node-" + uuid.uuid4().hex[:12]
        atomic_write(path, new.encode() + b"\n")
        return new

    def load(self) -> AgentState:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return AgentState(0, [])
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT:
                raise ValueError(f"unknown format {d.get('format')!r}")
            return AgentState(int(d.get("desired_version", 0)), [TaskRecord.from_json(t) for t in d["tasks"]])
        except (ValueError, KeyError, TypeError) as e:
            # Keep the bad file for a human; starting empty is safer than crashing every restart.
            bad = self._path.with_name("state.json.corrupt")
            os.replace(self._path, bad)
            log.error("state file unreadable (%s); moved to %s, starting with no tasks", e, bad)
            return AgentState(0, [])

    def save(self, desired_version: int, tasks: list[TaskRecord]) -> None:
        self.write(self.encode(desired_version, tasks))

    @staticmethod
    def encode(desired_version: int, tasks: list[TaskRecord]) -> bytes:
        """The file's bytes; cheap enough for the event loop (the fsync is what is not)."""
        doc = {"format": FORMAT, "desired_version": desired_version, "tasks": [asdict(t) for t in tasks]}
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    def write(self, data: bytes, seq: int | None = None) -> None:
        """Writes encoded state atomically. Thread-safe: with `seq`, an older
        state never replaces a newer one that another thread wrote first."""
        with self._lock:
            if seq is not None:
                if seq <= self._written_seq:
                    return
                self._written_seq = seq
            atomic_write(self._path, data)
