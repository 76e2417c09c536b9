"""Rebalancing glue: live utilisation history -> plan_rebalance() -> MigrateTask commands.

The planner (controller/placement/rebalance.py) is pure; this module feeds
it the cluster view, the per-node utilisation history the leader keeps from
reports (sessions.py), the last time each task was moved (cooldown) and the
migrations in flight, and turns its moves into the RPC answer
(PlanRebalance) or into MigrateTask proposals stamped with the planning term
(ApplyRebalance, and the automatic loop when --rebalance-auto is set).
"""

from __future__ import annotations

import asyncio
import logging

from controller import scheduling
from lepton.errors import FailedPrecondition, LeptonError
from lepton.v1 import commands_pb2, control_pb2

log = logging.getLogger("lepton.controller.rebalance")


def _planner():
    try:
        from controller.placement.rebalance import RebalanceConfig, plan_rebalance
    except ImportError as e:  # the planner is built in parallel; say so instead of crashing
        raise FailedPrecondition(f"the rebalance planner is not available in this build ({e})") from None
    return plan_rebalance, RebalanceConfig


class Memory:
    """Leader memory of recent moves (cooldown): task id -> time it was last moved (ms)."""

    def __init__(self) -> None:
        self.last_moved_ms: dict[str, int] = {}


def _memory(replica) -> Memory:
    mem = getattr(replica, "rebalance_memory", None)
    if mem is None:
        mem = Memory()
        replica.rebalance_memory = mem
    return mem


def compute(replica, max_moves: int = 0):
    """Runs the planner over the current state; returns (placement RebalancePlan, tasks by id)."""
    plan_rebalance, RebalanceConfig = _planner()
    state = replica.state
    tasks = list(state.tasks())
    jobs = scheduling.jobs_by_id(state)
    view = scheduling.build_view(state.nodes(), tasks, jobs, scheduling.live_usage_of(replica))
    nodes = {n.id: n for n in state.nodes()}
    history = {
        nid: utilisation(lv.history, nodes[nid]) for nid, lv in replica.sessions.live.items() if nid in nodes
    }
    inflight: dict[str, int] = {}
    for t in tasks:
        if t.migrating_to:
            for nid in (t.node_id, t.migrating_to):
                inflight[nid] = inflight.get(nid, 0) + 1
    config = RebalanceConfig(max_moves_per_round=max_moves) if max_moves else RebalanceConfig()
    plan = plan_rebalance(
        view, history, replica.clock.now_ms(), dict(_memory(replica).last_moved_ms), inflight, config
    )
    return plan, {t.id: t for t in tasks}


def utilisation(samples, node) -> list[float]:
    """Samples (time_ms, cpu_millis, memory_bytes, network_mbps) -> 0..1, the max over dimensions."""
    alloc = scheduling.res(node.capacity) - scheduling.res(node.reserve)
    out = []
    for _t, cpu, mem, net in samples:
        fractions = [
            used / cap
            for used, cap in ((cpu, alloc.cpu_millis), (mem, alloc.memory_bytes), (net, alloc.network_mbps))
            if cap > 0
        ]
        out.append(max(fractions, default=0.0))
    return out


def _to_message(plan, tasks_by_id, applied: bool) -> control_pb2.RebalancePlan:
    out = control_pb2.RebalancePlan(notes=list(getattr(plan, "notes", ())), applied=applied)
    for m in plan.moves:
        t = tasks_by_id.get(m.task_id)
        out.moves.add(
            task_id=m.task_id,
            job_id=getattr(m, "job_id", "") or (t.job_id if t is not None else ""),
            from_node=m.from_node,
            to_node=m.to_node,
            reason=getattr(m, "reason", ""),
            score=float(getattr(m, "score", 0.0)),
            kind=str(getattr(m, "kind", "")),
        )
    return out


def plan_message(replica, max_moves: int = 0) -> control_pb2.RebalancePlan:
    plan, tasks = compute(replica, max_moves)
    return _to_message(plan, tasks, applied=False)


async def apply_plan(replica, max_moves: int = 0, term: int | None = None) -> control_pb2.RebalancePlan:
    """Plans and proposes one MigrateTask per move (each fenced by the planning term)."""
    term = replica.node.term if term is None else term
    plan, tasks = compute(replica, max_moves)
    msg = _to_message(plan, tasks, applied=True)
    mem = _memory(replica)
    for m in plan.moves:
        t = tasks.get(m.task_id)
        body = commands_pb2.MigrateTask(
            task_id=m.task_id,
            expected_attempt=t.attempt if t is not None else 0,
            target_node_id=m.to_node,
            reason=getattr(m, "reason", "") or "rebalance",
            stop_then_start=str(getattr(m, "kind", "")) == "stop_then_start",
        )
        try:
            await replica.propose(body, plan_term=term)
            mem.last_moved_ms[m.task_id] = replica.clock.now_ms()
            if getattr(replica, "metrics", None) is not None:
                replica.metrics.observe_moves("rebalance")
        except LeptonError as e:
            msg.notes.append(f"move of {m.task_id} not applied: {e}")
    return msg


async def auto_loop(replica, term: int) -> None:
    """Automatic mode (off by default): plan and apply every rebalance_interval."""
    while True:
        await asyncio.sleep(replica.cfg.rebalance_interval)
        result = await apply_plan(replica, 0, term)
        if result.moves:
            log.info("rebalance: %d move(s) applied", len(result.moves))
