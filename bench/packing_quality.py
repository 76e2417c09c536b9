"""Benchmark: packing quality of bin-pack placement against an exact optimum (design brief § 9).

For small random instances (<= 40 tasks of mixed multi-dimensional shapes,
identical empty nodes) it counts the nodes `place(..., Policy.BINPACK)` uses
and the minimum number of nodes from a bin-packing ILP solved exactly with
`scipy.optimize.milp` (HiGHS), and prints the mean and max ratio.
Target: mean ratio <= 1.05. Needs scipy (the `bench` extra).

    python bench/packing_quality.py [--quick] [--instances N] [--tasks N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from controller.placement import ClusterView, NodeInfo, Policy, Res, TaskRequest, place

GiB = 2**30
NODE = Res(32_000, 128 * GiB, 10_000, 0)

# The bench mix: small services, medium workers, large jobs, network-heavy ingest (cpu, GiB, Mbit/s).
MIX = (
    ((500, 2_000), (1, 4), (50, 500)),
    ((2_000, 6_000), (4, 24), (200, 1_000)),
    ((8_000, 16_000), (24, 64), (500, 2_000)),
    ((1_000, 4_000), (2, 16), (2_000, 5_000)),
)


def instance(rng: random.Random, n: int) -> list[Res]:
    out = []
    for _ in range(n):
        (c0, c1), (m0, m1), (n0, n1) = rng.choice(MIX)
        out.append(Res(rng.randint(c0, c1), rng.randint(m0, m1) * GiB, rng.randint(n0, n1), 0))
    return out


def lepton_nodes(tasks: list[Res], policy: Policy, packing: bool = True) -> int:
    nodes = tuple(NodeInfo(f"n{i:03d}", {}, NODE, Res(), Res()) for i in range(len(tasks)))
    reqs = [TaskRequest(f"t{i}", "j", 0, i, r) for i, r in enumerate(tasks)]
    plan = place(ClusterView(nodes), reqs, policy, packing=packing)
    assert not plan.unplaced, "every instance task fits an empty node"
    return len({a.node_id for a in plan.assignments})


def optimum(tasks: list[Res], upper: int, time_limit: float) -> tuple[int, bool]:
    """Minimum number of NODE-sized bins (ILP); returns (bins, proven optimal)."""
    n, m = len(tasks), upper
    size = np.array([r.as_tuple()[:3] for r in tasks], dtype=float)  # (n, 3); no GPUs in the mix
    cap = np.array(NODE.as_tuple()[:3], dtype=float)
    size = size / cap  # normalise each dimension to a node
    nx = n * m  # x[i, j] at i * m + j, then y[j] at nx + j
    c = np.concatenate([np.zeros(nx), np.ones(m)])
    rows, lo, hi = [], [], []
    for i in range(n):  # each task on exactly one node
        a = np.zeros(nx + m)
        a[i * m : (i + 1) * m] = 1
        rows.append(a), lo.append(1), hi.append(1)
    for j in range(m):  # capacity per dimension, only on opened nodes
        for d in range(3):
            a = np.zeros(nx + m)
            a[np.arange(n) * m + j] = size[:, d]
            a[nx + j] = -1
            rows.append(a), lo.append(-np.inf), hi.append(0)
    for j in range(m - 1):  # symmetry breaking: open nodes in order
        a = np.zeros(nx + m)
        a[nx + j], a[nx + j + 1] = 1, -1
        rows.append(a), lo.append(0), hi.append(np.inf)
    ub = np.ones(nx + m)
    for i in range(n):  # symmetry breaking: task i only on nodes 0..i
        ub[i * m + i + 1 : (i + 1) * m] = 0
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(nx + m),
        bounds=Bounds(np.zeros(nx + m), ub),
        options={"time_limit": time_limit},
    )
    if res.status == 0:
        return int(round(res.fun)), True
    # Stopped at the time limit: compare against the proven lower bound, which can only
    # make bin-pack look worse than it is (never better).
    bound = getattr(res, "mip_dual_bound", None)
    return (max(1, int(np.ceil(bound - 1e-6))) if bound is not None else upper), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 instances of up to 20 tasks")
    ap.add_argument("--instances", type=int, default=30)
    ap.add_argument("--tasks", type=int, default=40, help="max tasks per instance")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds per ILP")
    args = ap.parse_args()
    if args.quick:
        args.instances, args.tasks = 10, 20
    rng = random.Random(args.seed)
    ratios, plain_ratios, spread_ratios, unproven = [], [], [], 0
    t0 = time.perf_counter()
    for k in range(args.instances):
        n = rng.randint(max(5, args.tasks // 2), args.tasks)
        tasks = instance(rng, n)
        ours = lepton_nodes(tasks, Policy.BINPACK)
        opt, proven = optimum(tasks, ours, args.time_limit)
        unproven += not proven
        ratios.append(ours / opt)
        plain_ratios.append(lepton_nodes(tasks, Policy.BINPACK, packing=False) / opt)
        spread_ratios.append(lepton_nodes(tasks, Policy.SPREAD) / opt)
        print(
            f"instance {k:2d}: {n:2d} tasks  bin-pack {ours:2d} nodes  optimum {opt:2d}{'' if proven else ' (not proven)'}"
        )
    r = np.array(ratios)
    print(
        f"\nbin-pack / optimum over {len(r)} instances: mean {r.mean():.3f}  max {r.max():.3f}  "
        f"optimal on {int((r == 1).sum())}/{len(r)}  ({unproven} ILPs hit the time limit)"
    )
    p = np.array(plain_ratios)
    print(
        f"bin-pack without the packing pass (best fit in submission order): mean {p.mean():.3f}  max {p.max():.3f}"
    )
    print(f"spread / optimum (for contrast): mean {np.mean(spread_ratios):.3f}")
    print(f"elapsed {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
