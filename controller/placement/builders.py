"""Builders for placement inputs in human units (cores, GiB, Mbit/s), for tests, benchmarks and examples.

Not used by the planners themselves; they keep table-driven tests short:
`node("n1", cpu=8, mem=32, labels={"zone": "a"})`, `req("t1", prio=2, cpu=1)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.placement.model import ClusterView, Constraint, NodeInfo, PlacedTask, Res, TaskRequest

GiB = 2**30


def res(cpu: float = 0, mem: float = 0, net: int = 0, gpus: int = 0) -> Res:
    """cpu in cores, mem in GiB, net in Mbit/s."""
    return Res(int(round(cpu * 1000)), int(round(mem * GiB)), int(net), int(gpus))


def running(
    task_id: str,
    job: str | None = None,
    prio: int = 0,
    cpu: float = 1,
    mem: float = 1,
    net: int = 0,
    gpus: int = 0,
    migratable: bool = False,
    job_type: str = "service",
    **kw,
) -> PlacedTask:
    return PlacedTask(
        task_id, job or task_id.split(".")[0], prio, res(cpu, mem, net, gpus), migratable, job_type, **kw
    )


def node(
    node_id: str,
    cpu: float = 16,
    mem: float = 64,
    net: int = 10_000,
    gpus: int = 0,
    *,
    reserved: Res | None = None,
    live: Res | None = None,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    schedulable: bool = True,
    gpu_models: tuple[str, ...] = (),
    tasks: tuple[PlacedTask, ...] = (),
) -> NodeInfo:
    """A node; `reserved` defaults to the sum of its tasks' requests."""
    if reserved is None:
        reserved = Res()
        for t in tasks:
            reserved = reserved + t.resources
    return NodeInfo(
        node_id,
        dict(labels or {}),
        res(cpu, mem, net, gpus),
        reserved,
        live or Res(),
        ready,
        schedulable,
        gpu_models,
        tasks,
    )


def req(
    task_id: str,
    job: str | None = None,
    prio: int = 0,
    order: int = 0,
    cpu: float = 1,
    mem: float = 1,
    net: int = 0,
    gpus: int = 0,
    constraints: tuple[Constraint, ...] = (),
    distinct: bool = False,
    gpu_model: str = "",
    avoid: tuple[str, ...] = (),
) -> TaskRequest:
    return TaskRequest(
        task_id,
        job or task_id.split(".")[0],
        prio,
        order,
        res(cpu, mem, net, gpus),
        constraints,
        distinct,
        gpu_model,
        avoid,
    )


def view(*nodes: NodeInfo) -> ClusterView:
    return ClusterView(tuple(nodes))
