"""Benchmark: pure placement throughput of `controller.placement.place` (design brief § 9).

Builds a cluster of 1,000 / 5,000 / 10,000 nodes (CPU nodes and GPU nodes in
three zones, some already partly used) and 50,000 pending tasks in 500 jobs of
mixed shapes (small/medium/large/GPU, label constraints, some distinct-node
jobs, four priorities), runs one `place()` over all of them and prints tasks/s
(best of --repeat, wall and CPU time). A second scenario gives every job its own
priority, so each level is one job of 100 tasks and the bin-pack packing pass
runs for each. Target: >= 20,000 tasks/s at 5,000 nodes on the 2-core machine.
Last, the slow path: 5,000 nodes full of low-priority work and a burst of
high-priority tasks that each need one or two evictions.

    python bench/placement_bench.py [--quick] [--repeat N] [--policy binpack|spread]
"""

from __future__ import annotations

import argparse
import random
import time

from controller.placement import (
    ClusterView,
    Constraint,
    NodeInfo,
    PlacedTask,
    Policy,
    Res,
    TaskRequest,
    place,
)

GiB = 2**30
ZONES = ("a", "b", "c")


def build_nodes(n: int, seed: int = 1) -> tuple[NodeInfo, ...]:
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        zone = ZONES[i % 3]
        if i % 10 == 0:  # 10% GPU nodes
            model = "NVIDIA H100 80GB HBM3" if i % 20 == 0 else "NVIDIA A100-SXM4-40GB"
            alloc = Res(96_000, 1024 * GiB, 100_000, 8)
            labels = {"zone": zone, "class": "gpu", "rack": f"r{i // 40}"}
            gpus = (model,) * 8
        else:
            alloc = Res(64_000, 256 * GiB, 25_000, 0)
            labels = {"zone": zone, "class": "cpu", "rack": f"r{i // 40}"}
            gpus = ()
        # A third of the nodes already run a little (noisy live usage included).
        busy = rng.random() < 0.33
        reserved = Res(8_000, 32 * GiB, 1_000, 0) if busy else Res()
        live = Res(12_000, 40 * GiB, 2_000, 0) if busy else Res()
        tasks = (PlacedTask(f"old-{i}", f"oldjob-{i % 50}", 0, reserved),) if busy else ()
        nodes.append(NodeInfo(f"node-{i:05d}", labels, alloc, reserved, live, gpu_models=gpus, tasks=tasks))
    return tuple(nodes)


SHAPES = (
    ("small", Res(500, 1 * GiB, 100, 0)),
    ("medium", Res(2_000, 8 * GiB, 500, 0)),
    ("large", Res(8_000, 32 * GiB, 2_000, 0)),
    ("gpu", Res(8_000, 64 * GiB, 1_000, 1)),
)


def build_tasks(n_tasks: int, n_jobs: int, seed: int = 2, prio_per_job: bool = False) -> list[TaskRequest]:
    rng = random.Random(seed)
    per_job = n_tasks // n_jobs
    tasks = []
    order = 0
    for j in range(n_jobs):
        kind, res = SHAPES[rng.choices(range(4), weights=(5, 3, 1, 1))[0]]
        constraints: tuple[Constraint, ...] = ()
        r = rng.random()
        if r < 0.2:
            constraints = (Constraint("zone", "=", (rng.choice(ZONES),)),)
        elif r < 0.3:
            constraints = (Constraint("zone", "in", ("a", "b")),)
        gpu_model = "H100" if kind == "gpu" and rng.random() < 0.5 else ""
        distinct = kind != "gpu" and rng.random() < 0.1
        prio = rng.choice((0, 1, 2, 3))
        if prio_per_job:  # every job its own priority level: the bin-pack packing pass runs per job
            prio = n_jobs - j
        for k in range(per_job):
            tasks.append(
                TaskRequest(f"job{j}.{k}", f"job{j}", prio, order, res, constraints, distinct, gpu_model)
            )
            order += 1
    return tasks


def run(n_nodes: int, n_tasks: int, repeat: int, policy: Policy, prio_per_job: bool) -> None:
    view = ClusterView(build_nodes(n_nodes))
    tasks = build_tasks(n_tasks, max(1, n_tasks // 100), prio_per_job=prio_per_job)
    best, best_cpu = float("inf"), float("inf")
    plan = None
    for _ in range(repeat):
        # CPU time next to wall time: the dev machine's 2 cores are shared, wall time is noisy.
        t0, c0 = time.perf_counter(), time.process_time()
        plan = place(view, tasks, policy)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    assert plan is not None
    print(
        f"{n_nodes:>6} nodes  {n_tasks:>6} tasks  {policy.value:<7}  {'per-job' if prio_per_job else 'mixed':<7}  "
        f"wall {best * 1000:7.1f} ms {n_tasks / best:>9,.0f} tasks/s  cpu {n_tasks / best_cpu:>9,.0f} tasks/s  "
        f"placed {len(plan.assignments)}  preempted {len(plan.preemptions)}  unplaced {len(plan.unplaced)}"
    )


def run_preemption_burst(n_nodes: int, n_tasks: int, cores: int) -> None:
    """Every node full of low-priority work; a burst of high-priority tasks each needing evictions."""
    nodes = tuple(
        NodeInfo(
            f"node-{i:05d}",
            {},
            Res(16_000, 64 * GiB, 10_000, 0),
            Res(16_000, 64 * GiB, 0, 0),
            Res(),
            tasks=tuple(
                PlacedTask(f"o{i}.{k}", f"old{k}", k % 3, Res(2_000, 8 * GiB, 0, 0)) for k in range(8)
            ),
        )
        for i in range(n_nodes)
    )
    tasks = [TaskRequest(f"hi.{k}", "hi", 10, k, Res(cores * 1000, 8 * GiB, 0, 0)) for k in range(n_tasks)]
    t0, c0 = time.perf_counter(), time.process_time()
    plan = place(ClusterView(nodes), tasks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{n_nodes:>6} nodes  {n_tasks:>6} tasks  preemption burst, {cores // 2} eviction(s) each  "
        f"wall {wall * 1000:7.1f} ms {n_tasks / wall:>9,.0f} tasks/s  cpu {n_tasks / cpu:>9,.0f} tasks/s  "
        f"placed {len(plan.assignments)}  preempted {len(plan.preemptions)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 tasks, one repetition")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per size; the best is printed")
    ap.add_argument("--policy", choices=[p.value for p in Policy], default="binpack")
    args = ap.parse_args()
    n_tasks = 5_000 if args.quick else 50_000
    repeat = 1 if args.quick else args.repeat
    print("mixed: 500 jobs over 4 priorities; per-job: each job its own priority (packing pass active)")
    for prio_per_job in (False, True):
        for n_nodes in (1_000, 5_000, 10_000):
            run(n_nodes, n_tasks, repeat, Policy(args.policy), prio_per_job)
    for cores in (2, 4):
        run_preemption_burst(5_000, 200 if args.quick else 2_000, cores)


if __name__ == "__main__":
    main()
