"""Runs the deterministic Raft fault simulator (tests/raft_sim) over thousands of seeds.

Default run: 2,000 seeds x 2,000 steps on 3 nodes plus 2,000 x 2,000 on 5
nodes (about a minute on a 2-core machine). `-m soak` runs many more and
longer ones. A failure names the seed, the violated property and the last
events; replay with `python -m tests.raft_sim --seed N [--nodes 5] --trace`.
"""

from __future__ import annotations

import time

import pytest

from controller.raft.raftlog import RaftLog
from tests.raft_sim import SimConfig, SimFailure, run_seed

BLOCK = 100


def _run_block(first: int, count: int, nodes: int, steps: int) -> float:
    t0 = time.perf_counter()
    for seed in range(first, first + count):
        run_seed(seed, SimConfig(nodes=nodes, steps=steps))
    return count * steps / (time.perf_counter() - t0)


@pytest.mark.parametrize("block", range(20))
@pytest.mark.parametrize("nodes", [3, 5])
def test_sim_safety_and_liveness(nodes: int, block: int) -> None:
    rate = _run_block(block * BLOCK, BLOCK, nodes, 2000)
    print(f"{nodes} nodes, seeds {block * BLOCK}..{block * BLOCK + BLOCK - 1}: {rate:,.0f} steps/s")


@pytest.mark.soak
@pytest.mark.parametrize("block", range(20))
@pytest.mark.parametrize("nodes", [3, 5])
def test_sim_soak(nodes: int, block: int) -> None:
    # Disjoint from the default seeds; longer runs reach deeper histories.
    rate = _run_block(100_000 + block * 250, 250, nodes, 10_000)
    print(f"soak {nodes} nodes block {block}: {rate:,.0f} steps/s")


@pytest.mark.parametrize(
    "seed,nodes",
    [
        (
            952,
            3,
        ),  # a crashed-before-first-fsync node rejoined from a prefix of ADD entries and elected itself
        (1002947, 3),  # a joining node at a higher term, pre-vote and check-quorum off: stranded forever
        (1009046, 3),  # two candidates, one with a stale configuration, never learned each other's term
    ],
)
def test_sim_regressions(seed: int, nodes: int) -> None:
    run_seed(seed, SimConfig(nodes=nodes, steps=2000))


def test_replay_is_deterministic() -> None:
    a = run_seed(7, SimConfig(nodes=5, steps=1500))
    b = run_seed(7, SimConfig(nodes=5, steps=1500))
    assert list(a.events) == list(b.events) and a.stats == b.stats
    assert a.check.leaders == b.check.leaders


def test_simulator_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Voters that ignore the up-to-date check (§5.4.1) must be caught, with seed and trace."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)
    with pytest.raises(SimFailure) as ei:
        for seed in range(200):
            run_seed(seed, SimConfig(nodes=5, steps=2000))
    e = ei.value
    assert e.check in ("leader completeness", "state machine safety", "log matching", "core assertion")
    text = str(e)
    assert f"seed {e.seed}" in text and "replay: python -m tests.raft_sim" in text
    assert len(e.trace) > 10
