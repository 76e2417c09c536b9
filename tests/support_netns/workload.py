"""The fault suite's client: submits and cancels small jobs continuously and keeps a history.

Every operation goes through `lepton.client.LeptonClient` (the public Python
client, with its failover and redirects) pointed at all controllers, from
the root namespace. The history separates what the cluster *acknowledged*
(submit returned a job, cancel returned the job) from operations whose
outcome is unknown (a timeout or no reachable leader: they may or may not
have happened) and from definite rejections. The checker holds the cluster
to the acknowledged ones and accepts either outcome for the unknown ones.

Job names are unique per run (`f<seed>-<n>`), so the checker can tie any
job it finds back to the submit that made it, and spot a job nobody asked
for or a second job for one request id.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from lepton import errors
from lepton.client import LeptonClient
from lepton.v1 import types_pb2

# Tiny requests so that every job fits on four 100-core agents however many
# the run submits; memory is enough for `sleep` even where cgroup v2 enforces it.
TASK_CPU_MILLIS = 10
TASK_MEMORY_BYTES = 32 * 1024 * 1024

# Definite answers: the operation certainly did not happen.
_REJECTED = (errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition)


def job_spec(name: str, count: int) -> types_pb2.JobSpec:
    """A service job of `count` tasks that sleep for an hour (they outlive any run)."""
    return types_pb2.JobSpec(
        name=name,
        type=types_pb2.JOB_TYPE_SERVICE,
        count=count,
        template=types_pb2.TaskTemplate(
            command="sleep",
            args=["3600"],
            resources=types_pb2.Resources(cpu_millis=TASK_CPU_MILLIS, memory_bytes=TASK_MEMORY_BYTES),
            # Short grace: `sleep` dies on SIGTERM anyway; keeps a stuck stop from outlasting the settle.
            kill_timeout_ms=1000,
        ),
    )


@dataclass
class Submitted:
    """One submit the client made: its spec and request id, and the job id when acknowledged."""

    name: str
    request_id: str
    spec: types_pb2.JobSpec
    job_id: str = ""  # set when acknowledged
    outcome: str = "unknown"  # acknowledged | unknown | rejected
    error: str = ""


@dataclass
class History:
    """What the client did, as seen from the client (thread-safe appends)."""

    submits: dict[str, Submitted] = field(default_factory=dict)  # by name
    cancels_acked: set[str] = field(default_factory=set)  # job ids
    cancels_unknown: set[str] = field(default_factory=set)
    cancels_rejected: dict[str, str] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    # After the faults, unknown outcomes are retried (same request id): what the retry found.
    resolved: dict[str, int] = field(default_factory=dict)
    retry_violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_error(self, exc: BaseException) -> None:
        with self.lock:
            kind = type(exc).__name__
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def counts(self) -> dict[str, int]:
        with self.lock:
            subs = list(self.submits.values())
            return {
                "submits_acknowledged": sum(s.outcome == "acknowledged" for s in subs),
                "submits_unknown": sum(s.outcome == "unknown" for s in subs),
                "submits_rejected": sum(s.outcome == "rejected" for s in subs),
                "cancels_acknowledged": len(self.cancels_acked),
                "cancels_unknown": len(self.cancels_unknown - self.cancels_acked),
                "cancels_rejected": len(self.cancels_rejected),
            }


class Workload:
    """`workers` threads, each with its own client, submitting and cancelling until `stop()`.

    The mix keeps a few dozen jobs alive: the more are live, the likelier a
    cancel. Requests are paced (`pause` seconds between operations per worker)
    so the cluster on two shared cores is stressed by faults, not by load.
    """

    def __init__(
        self,
        addresses: list[str],
        seed: int,
        workers: int = 2,
        timeout: float = 5.0,
        pause: float = 0.25,
        target_live: int = 30,
    ) -> None:
        self.addresses = addresses
        self.seed = seed
        self.workers = workers
        self.timeout = timeout
        self.pause = pause
        self.target_live = target_live
        self.history = History()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._names = iter(range(1, 1 << 30))
        self._names_lock = threading.Lock()
        self.exceptions: list[BaseException] = []

    def start(self) -> None:
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), name=f"workload-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            # A call in flight ends within the client's deadline.
            t.join(timeout=self.timeout * 3 + 5)

    # ---------------------------------------------------------------- one worker
    def _next_name(self) -> str:
        with self._names_lock:
            return f"f{self.seed % 100000}-{next(self._names)}"

    def _live(self) -> list[str]:
        """Acknowledged jobs nobody has tried to cancel yet."""
        h = self.history
        with h.lock:
            tried = h.cancels_acked | h.cancels_unknown | set(h.cancels_rejected)
            return [s.job_id for s in h.submits.values() if s.job_id and s.job_id not in tried]

    def _run(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        try:
            with LeptonClient(self.addresses, timeout=self.timeout) as client:
                while not self._stop.is_set():
                    live = self._live()
                    p_cancel = min(0.9, 0.2 + 0.6 * len(live) / max(1, self.target_live))
                    if live and rng.random() < p_cancel:
                        self._cancel(client, rng.choice(live))
                    else:
                        self._submit(client, rng)
                    self._stop.wait(self.pause)
        except BaseException as exc:  # a bug in the workload itself: surface it in the test
            self.exceptions.append(exc)

    def _submit(self, client: LeptonClient, rng: random.Random) -> None:
        name = self._next_name()
        sub = Submitted(name=name, request_id=uuid.uuid4().hex, spec=job_spec(name, rng.randint(1, 3)))
        h = self.history
        with h.lock:
            h.submits[name] = sub  # recorded before the call: a crash mid-call still leaves it "unknown"
        try:
            detail = client.submit_job(sub.spec, request_id=sub.request_id)
        except _REJECTED as exc:
            h.note_error(exc)
            with h.lock:
                sub.outcome, sub.error = "rejected", str(exc)
            return
        except errors.LeptonError as exc:
            h.note_error(exc)
            with h.lock:
                sub.error = str(exc)
            return
        with h.lock:
            sub.job_id, sub.outcome = detail.job.id, "acknowledged"

    def _cancel(self, client: LeptonClient, job_id: str) -> None:
        h = self.history
        with h.lock:
            h.cancels_unknown.add(job_id)
        try:
            client.cancel_job(job_id)
        except _REJECTED as exc:
            h.note_error(exc)
            with h.lock:
                h.cancels_unknown.discard(job_id)
                h.cancels_rejected[job_id] = str(exc)
            return
        except errors.LeptonError as exc:
            h.note_error(exc)
            return
        with h.lock:
            h.cancels_unknown.discard(job_id)
            h.cancels_acked.add(job_id)


def resolve_unknowns(history: History, addresses: list[str], timeout: float = 15.0) -> None:
    """Retries every operation with an unknown outcome, once the faults are over.

    First looks whether the lost attempt took effect (the job exists under
    its unique name; the job is cancelled), then retries it: a submit with
    its original request id must return the job the first attempt made, if
    it made one, and never a second job; a cancel is a no-op the second time.
    Afterwards every operation counts as acknowledged. What the retries found
    lands in `history.resolved`; broken idempotency in `history.retry_violations`.
    """

    def bump(key: str) -> None:
        history.resolved[key] = history.resolved.get(key, 0) + 1

    with LeptonClient(addresses, timeout=timeout) as client:
        with history.lock:
            unknown = [s for s in history.submits.values() if s.outcome == "unknown"]
            cancels = sorted(history.cancels_unknown - history.cancels_acked)
        for sub in unknown:
            try:
                existing = client.get_job(sub.name).job
            except errors.NotFound:
                existing = None
            detail = client.submit_job(sub.spec, request_id=sub.request_id)
            bump("submit_had_happened" if existing is not None else "submit_had_not_happened")
            if existing is not None and detail.job.id != existing.id:
                history.retry_violations.append(
                    f"1: retry of submit {sub.name} (request {sub.request_id}) made job {detail.job.id}; "
                    f"the first attempt had made {existing.id}"
                )
            with history.lock:
                sub.job_id, sub.outcome = detail.job.id, "acknowledged"
        for job_id in cancels:
            before = client.get_job(job_id).job
            bump(
                "cancel_had_happened"
                if before.state == types_pb2.JOB_STATE_CANCELLED
                else "cancel_had_not_happened"
            )
            client.cancel_job(job_id)
            with history.lock:
                history.cancels_unknown.discard(job_id)
                history.cancels_acked.add(job_id)


def wait_until(predicate, timeout: float, interval: float = 0.5):
    """predicate()'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
