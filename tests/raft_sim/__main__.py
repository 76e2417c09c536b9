"""Replays simulator seeds: python -m tests.raft_sim --seed N [--steps 2000] [--nodes 5] [--trace] [--count K]."""

from __future__ import annotations

import argparse
import sys
import time

from .sim import SimConfig, SimFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.raft_sim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=1, help="run seeds seed..seed+count-1")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="print every event")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    failures = 0
    for seed in range(a.seed, a.seed + a.count):
        cfg = SimConfig(nodes=a.nodes, steps=a.steps, trace=a.trace)
        try:
            sim = run_seed(seed, cfg)
        except SimFailure as e:
            failures += 1
            print(e, file=sys.stderr)
            continue
        if a.count == 1:
            print(f"seed {seed}: ok {sim.stats}")
    dt = time.perf_counter() - t0
    total = a.count * a.steps
    print(
        f"{a.count} seeds x {a.steps} steps, {a.nodes} nodes: {failures} failed, {dt:.1f}s, {total / dt:,.0f} steps/s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
