"""Builders for tests and simulations that drive a ClusterState without Raft.

`Harness` plays the part of Raft and the proposer: it stamps each command
with a time and feeds it to `apply` at the next index in the current term,
and keeps the encoded log so that the same history can be replayed into a
fresh replica (determinism checks). The spec/resource builders give valid
defaults so that each test states only what it is about.
"""

from __future__ import annotations

from lepton.v1 import commands_pb2, types_pb2

from .cluster import ClusterState
from .commands import command, encode

TS = types_pb2.TaskState


def resources(
    cpu: int = 1000, mem: int = 2**30, net: int = 0, gpus: int = 0, gpu_mem: int = 0
) -> types_pb2.Resources:
    return types_pb2.Resources(
        cpu_millis=cpu, memory_bytes=mem, network_mbps=net, gpus=gpus, gpu_memory_bytes=gpu_mem
    )


def job_spec(
    name: str = "web",
    *,
    count: int = 1,
    priority: int = 0,
    batch: bool = False,
    command_: str = "sleep 100",
    res: types_pb2.Resources | None = None,
    restart: types_pb2.RestartPolicy | None = None,
    migratable: bool = False,
) -> types_pb2.JobSpec:
    tmpl = types_pb2.TaskTemplate(
        command=command_, resources=res if res is not None else resources(), migratable=migratable
    )
    if restart is not None:
        tmpl.restart.CopyFrom(restart)
    return types_pb2.JobSpec(
        name=name,
        priority=priority,
        type=types_pb2.JOB_TYPE_BATCH if batch else types_pb2.JOB_TYPE_SERVICE,
        count=count,
        template=tmpl,
    )


def register_node(
    node_id: str, *, cpu: int = 16_000, mem: int = 64 * 2**30, net: int = 10_000, gpus: int = 0, labels=None
) -> commands_pb2.RegisterNode:
    return commands_pb2.RegisterNode(
        node_id=node_id,
        hostname=f"{node_id}.local",
        address=f"{node_id}:7200",
        capacity=resources(cpu, mem, net, gpus),
        labels=labels or {},
        agent_version="test",
    )


class Harness:
    """A ClusterState plus a fake log: index, term and time advance per command."""

    def __init__(self, state: ClusterState | None = None, term: int = 1) -> None:
        self.state = state or ClusterState()
        self.term = term
        self.index = self.state.applied_index
        self.time_ms = 1_000_000
        self.log: list[tuple[int, int, bytes]] = []

    def apply_bytes(self, data: bytes, term: int | None = None) -> object:
        self.index += 1
        t = self.term if term is None else term
        self.log.append((self.index, t, data))
        return self.state.apply(self.index, t, data)

    def apply(self, body, *, plan_term: int | None = None, request_id: str = "") -> object:
        self.time_ms += 1000
        pt = self.term if plan_term is None else plan_term
        return self.apply_bytes(
            encode(command(body, time_ms=self.time_ms, plan_term=pt, request_id=request_id))
        )

    # ---- shorthands -------------------------------------------------------

    def add_node(self, node_id: str, **kw) -> types_pb2.Node:
        return self.apply(register_node(node_id, **kw))

    def submit(self, job_id: str, spec: types_pb2.JobSpec | None = None, request_id: str = "", **kw):
        return self.apply(
            commands_pb2.SubmitJob(job_id=job_id, spec=spec or job_spec(**kw)), request_id=request_id
        )

    def place(self, pairs: dict[str, str], preemptions=(), plan_term: int | None = None):
        """pairs: task id -> node id, at each task's current attempt."""
        assignments = [
            commands_pb2.Assignment(task_id=tid, node_id=nid, expected_attempt=self.state.task(tid).attempt)
            for tid, nid in pairs.items()
        ]
        return self.apply(
            commands_pb2.CommitPlan(assignments=assignments, preemptions=list(preemptions)),
            plan_term=plan_term,
        )

    def report(
        self, task_id: str, state: int, *, attempt: int | None = None, exit_code: int = 0, node_id: str = ""
    ):
        a = self.state.task(task_id).attempt if attempt is None else attempt
        return self.apply(
            commands_pb2.TaskUpdate(
                task_id=task_id, attempt=a, state=state, exit_code=exit_code, node_id=node_id
            )
        )

    def run(self, pairs: dict[str, str]) -> None:
        """Places tasks and reports them RUNNING."""
        self.place(pairs)
        for tid in pairs:
            self.report(tid, TS.TASK_STATE_RUNNING)

    def set_status(self, node_id: str, status: int, reason: str = ""):
        return self.apply(commands_pb2.SetNodeStatus(node_id=node_id, status=status, reason=reason))

    def replay_into(self, other: ClusterState) -> ClusterState:
        for index, term, data in self.log:
            other.apply(index, term, data)
        return other
