"""The placement planners' input and output model: plain immutable values.

The controller's adapter turns its ClusterState (and the leader's soft live
usage) into a `ClusterView` plus a list of `TaskRequest`s; `place()` answers a
`Plan`. Nothing here touches gRPC, protobuf or the clock, so the planners are
tested and benchmarked with these values alone.

Units are the wire units of `lepton.v1.Resources`: cpu in millicores, memory
in bytes, network in Mbit/s, GPUs as a count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Res:
    """A resource vector (request, reservation, usage or allocatable)."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    network_mbps: int = 0
    gpus: int = 0

    def as_tuple(self) -> tuple[int, int, int, int]:
        # The planners index dimensions in this fixed order (see DIMENSIONS).
        return (self.cpu_millis, self.memory_bytes, self.network_mbps, self.gpus)

    def __add__(self, other: Res) -> Res:
        return Res(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.network_mbps + other.network_mbps,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Res) -> Res:
        return Res(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.network_mbps - other.network_mbps,
            self.gpus - other.gpus,
        )


# Dimension names in `Res.as_tuple()` order; they appear verbatim in reasons
# ("insufficient network on 3 nodes"), so they are part of the contract.
DIMENSIONS: tuple[str, ...] = ("cpu", "memory", "network", "gpus")

# Constraint operators, as in proto `Constraint.op`.
CONSTRAINT_OPS: frozenset[str] = frozenset({"=", "!=", "in", "not_in", "exists", "not_exists"})


@dataclass(frozen=True, slots=True)
class Constraint:
    """A label selector: `key op values` (op in CONSTRAINT_OPS)."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Constraints key per-plan caches, so they must hash: accept any sequence, keep a tuple.
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True, slots=True)
class PlacedTask:
    """A task that already holds a reservation on a node (a preemption or migration candidate)."""

    task_id: str
    job_id: str
    priority: int
    resources: Res
    migratable: bool = False
    job_type: str = "service"  # "service" | "batch"
    # What the rebalancer needs to honour when it moves the task (same meaning as in TaskRequest).
    constraints: tuple[Constraint, ...] = ()
    distinct_nodes: bool = False
    gpu_model: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the leader sees it at snapshot time."""

    id: str
    labels: Mapping[str, str]
    allocatable: Res  # capacity - system reserve
    reserved: Res  # sum of requests of active tasks placed here
    live_used: Res  # live usage from the agent's last report (zeros if unknown)
    ready: bool = True
    schedulable: bool = True  # False = cordoned or draining
    gpu_models: tuple[str, ...] = ()
    tasks: tuple[PlacedTask, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """A pending task to place."""

    task_id: str
    job_id: str
    priority: int  # larger = more important
    order: int  # submission order (lower first)
    resources: Res
    constraints: tuple[Constraint, ...] = ()
    distinct_nodes: bool = False  # at most one task of the job per node
    gpu_model: str = ""  # required GPU model, case-insensitive substring
    avoid_nodes: tuple[str, ...] = ()  # e.g. the node a task migrates away from


@dataclass(frozen=True)
class ClusterView:
    """The immutable snapshot a plan is computed from."""

    nodes: tuple[NodeInfo, ...]


class Policy(StrEnum):
    BINPACK = "binpack"  # most-allocated after placement: fill nodes, keep others empty
    SPREAD = "spread"  # least-allocated after placement: even out load


@dataclass(frozen=True)
class Assignment:
    task_id: str
    node_id: str
    score: float


@dataclass(frozen=True)
class Preemption:
    victim_task_id: str
    node_id: str
    for_task_id: str


@dataclass(frozen=True)
class Unplaced:
    """A task that cannot be placed; `reason` is built from constant phrases, `counts` is the same as data."""

    task_id: str
    reason: str
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    assignments: tuple[Assignment, ...]
    preemptions: tuple[Preemption, ...]
    unplaced: tuple[Unplaced, ...]
