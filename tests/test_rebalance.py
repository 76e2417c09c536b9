"""Table-driven tests of `plan_rebalance()`: thresholds, window, hysteresis, limits, cooldown, reasons."""

from __future__ import annotations

import pytest

from controller.placement import (
    MAKE_BEFORE_BREAK,
    STOP_THEN_START,
    Constraint,
    RebalanceConfig,
    plan_rebalance,
)
from controller.placement.builders import node, res, running, view

NOW = 1_000_000_000


def mig(task_id, prio=0, cpu=2.0, **kw):
    return running(task_id, prio=prio, cpu=cpu, mem=1, migratable=True, **kw)


def hot(nid="n1", tasks=None, busy=9.3, **kw):
    """A 10-core node whose live cpu is `busy` cores."""
    tasks = tasks if tasks is not None else (mig(f"{nid}-a", cpu=2), mig(f"{nid}-b", prio=3, cpu=2))
    return node(nid, cpu=10, mem=100, tasks=tasks, live=res(cpu=busy), **kw)


def cool(nid, used=2.0, **kw):
    return node(nid, cpu=10, mem=100, reserved=res(cpu=used), **kw)


def plan(nodes, history, last_moved=None, inflight=None, **cfg):
    return plan_rebalance(
        view(*nodes), history, NOW, last_moved or {}, inflight or {}, RebalanceConfig(**cfg)
    )


def moved(p) -> list[tuple[str, str, str]]:
    return [(m.task_id, m.from_node, m.to_node) for m in p.moves]


# --- thresholds and the sustained window ------------------------------------------------------

WINDOW_CASES = [
    # name, n1 history, moves expected
    ("five samples above", [0.93] * 5, True),
    ("only four samples", [0.93] * 4, False),
    ("one dip inside the window", [0.93, 0.93, 0.5, 0.93, 0.93], False),
    ("older dips do not count", [0.2, 0.2, 0.93, 0.93, 0.93, 0.93, 0.93], True),
    ("at the watermark is not above it", [0.85] * 5, False),
]


@pytest.mark.parametrize(("name", "n1", "expect"), WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_sustained_high_watermark(name, n1, expect):
    # The other node sits at 60%, above the low watermark: no imbalance rule, only the window.
    p = plan([hot(), cool("n2", used=5)], {"n1": n1, "n2": [0.6] * 5})
    assert bool(p.moves) is expect


IMBALANCE_CASES = [
    # name, n1 history, n2 history, moves expected
    ("spread beyond threshold with a cold node", [0.8] * 5, [0.2] * 5, True),
    ("spread within threshold", [0.7] * 5, [0.45] * 5, False),
    ("spread beyond threshold but no node below low", [0.84] * 5, [0.52] * 5, False),
    ("imbalance not sustained", [0.8, 0.8, 0.4, 0.8, 0.8], [0.2] * 5, False),
]


@pytest.mark.parametrize(("name", "n1", "n2", "expect"), IMBALANCE_CASES, ids=[c[0] for c in IMBALANCE_CASES])
def test_imbalance(name, n1, n2, expect):
    p = plan([hot(busy=8), cool("n2", used=2)], {"n1": n1, "n2": n2})
    assert bool(p.moves) is expect
    if expect:
        assert "more than 30% above n2 at 20% for 5 samples" in p.moves[0].reason


def test_imbalance_move_keeps_target_below_source_by_the_hysteresis():
    # Source at 80% sheding a 4-core task would end at 40%; the target at 20% would end at 60%:
    # the pair would just swap places, so the move is refused. A 2-core task (40% vs 60%) moves.
    big = (mig("big", cpu=4),)
    p = plan([hot(tasks=big, busy=8), cool("n2", used=2)], {"n1": [0.8] * 5, "n2": [0.2] * 5})
    assert p.moves == ()
    assert any("no target for big" in n for n in p.notes)
    small = (mig("small", cpu=2),)
    p = plan([hot(tasks=small, busy=8), cool("n2", used=2)], {"n1": [0.8] * 5, "n2": [0.2] * 5})
    assert moved(p) == [("small", "n1", "n2")]


# --- target choice and hysteresis -------------------------------------------------------------

HYSTERESIS_CASES = [
    # name, target reserved cores, task cores, moves expected
    ("target ends well below high - hysteresis", 2, 2, True),
    ("target would end at exactly 80% = 85% - 5%", 6, 2, False),
    ("target would end at 79%", 6, 1.9, True),
    ("target would end above the watermark", 7, 2, False),
]


@pytest.mark.parametrize(
    ("name", "target_used", "cores", "expect"), HYSTERESIS_CASES, ids=[c[0] for c in HYSTERESIS_CASES]
)
def test_target_must_stay_below_high_minus_hysteresis(name, target_used, cores, expect):
    p = plan(
        [hot(tasks=(mig("t", cpu=cores),)), cool("n2", used=target_used)], {"n1": [0.93] * 5, "n2": [0.2] * 5}
    )
    assert bool(p.moves) is expect


def test_target_whose_own_latest_sample_is_high_is_skipped():
    nodes = [hot(), cool("n2", used=1), cool("n3", used=3)]
    p = plan(nodes, {"n1": [0.93] * 5, "n2": [0.2, 0.2, 0.2, 0.2, 0.82], "n3": [0.3] * 5})
    assert [m.to_node for m in p.moves] == ["n3"]


def test_spread_policy_picks_the_least_allocated_feasible_target():
    nodes = [hot(), cool("n2", used=4), cool("n3", used=1), cool("n4", used=3)]
    p = plan(nodes, {"n1": [0.93] * 5}, max_moves_per_round=1)
    assert moved(p) == [("n1-a", "n1", "n3")]


def test_target_honours_constraints_and_readiness():
    task = mig("t", constraints=(Constraint("zone", "=", ("a",)),))
    nodes = [
        hot(tasks=(task,), labels={"zone": "a"}),
        cool("n2", used=0, labels={"zone": "b"}),
        cool("n3", used=0, labels={"zone": "a"}, ready=False),
        cool("n4", used=0, labels={"zone": "a"}, schedulable=False),
        cool("n5", used=5, labels={"zone": "a"}),
    ]
    p = plan(nodes, {"n1": [0.93] * 5})
    assert moved(p) == [("t", "n1", "n5")]


def test_no_target_at_all_is_a_note_not_an_error():
    p = plan([hot(), cool("n2", used=9)], {"n1": [0.93] * 5, "n2": [0.9] * 5})
    assert p.moves == ()
    assert any(n.startswith("n1: no target for") for n in p.notes)


# --- which tasks move ------------------------------------------------------------------------


def test_lowest_priority_migratable_task_moves_first():
    tasks = (mig("important", prio=9), running("pinned", prio=0, cpu=2), mig("cheap", prio=1))
    p = plan([hot(tasks=tasks), cool("n2")], {"n1": [0.93] * 5}, max_moves_per_round=1)
    assert moved(p) == [("cheap", "n1", "n2")]
    assert p.moves[0].reason == (
        "node n1 cpu 93% > 85% for 5 samples; n2 at 20% -> 40%; cheap (priority 1) lowest-priority migratable task"
    )


def test_non_migratable_tasks_never_move():
    p = plan([hot(tasks=(running("pinned", cpu=4),)), cool("n2")], {"n1": [0.93] * 5})
    assert p.moves == ()
    assert "n1: no migratable task out of cooldown" in p.notes


@pytest.mark.parametrize(("job_type", "kind"), [("service", MAKE_BEFORE_BREAK), ("batch", STOP_THEN_START)])
def test_move_kind_by_job_type(job_type, kind):
    p = plan([hot(tasks=(mig("t", job_type=job_type),)), cool("n2")], {"n1": [0.93] * 5})
    assert [m.kind for m in p.moves] == [kind]


COOLDOWN_CASES = [
    # name, ms since "n1-a" last moved, the task that moves
    ("never moved", None, "n1-a"),
    ("moved 100 s ago: in cooldown, next task moves", 100_000, "n1-b"),
    ("moved exactly 300 s ago: eligible again", 300_000, "n1-a"),
]


@pytest.mark.parametrize(("name", "ago", "expected"), COOLDOWN_CASES, ids=[c[0] for c in COOLDOWN_CASES])
def test_task_cooldown(name, ago, expected):
    last = {} if ago is None else {"n1-a": NOW - ago}
    p = plan([hot(), cool("n2")], {"n1": [0.93] * 5}, last_moved=last, max_moves_per_round=1)
    assert [m.task_id for m in p.moves] == [expected]


# --- limits -----------------------------------------------------------------------------------


def three_hot():
    return [hot("h1"), hot("h2"), hot("h3"), cool("c1", used=0), cool("c2", used=0), cool("c3", used=0)]


HOT3 = {"h1": [0.95] * 5, "h2": [0.94] * 5, "h3": [0.93] * 5}

LIMIT_CASES = [
    # name, config, inflight, expected moves as (from, to)
    ("moves per round", {"max_moves_per_round": 2}, {}, [("h1", "c1"), ("h2", "c2")]),
    ("source already migrating", {}, {"h1": 1}, [("h2", "c1"), ("h3", "c2")]),
    ("target already migrating", {"max_moves_per_round": 1}, {"c1": 1}, [("h1", "c2")]),
    ("cluster limit counts in-flight moves", {"max_inflight_cluster": 4}, {"x": 3}, [("h1", "c1")]),
    ("cluster limit reached", {"max_inflight_cluster": 4}, {"x": 4}, []),
    (
        "one move per node per round",
        {"max_moves_per_round": 5, "max_inflight_per_node": 1},
        {},
        [("h1", "c1"), ("h2", "c2"), ("h3", "c3")],
    ),
]


@pytest.mark.parametrize(
    ("name", "cfg", "inflight", "expected"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES]
)
def test_limits(name, cfg, inflight, expected):
    p = plan(three_hot(), HOT3, inflight=inflight, **cfg)
    assert [(m.from_node, m.to_node) for m in p.moves] == expected


def test_two_moves_off_one_node_when_the_per_node_limit_allows():
    tasks = tuple(mig(f"t{k}", cpu=1) for k in range(3))
    nodes = [hot(tasks=tasks, busy=9.8), cool("n2", used=0), cool("n3", used=0)]
    cfg = {"max_moves_per_round": 3, "max_inflight_per_node": 2}
    p = plan(nodes, {"n1": [0.98] * 5}, **cfg)
    # 98% -> 88% -> 78% < 80%: two moves, to different targets (each target took one in flight).
    assert moved(p) == [("t0", "n1", "n2"), ("t1", "n1", "n3")]
    p = plan(nodes, {"n1": [0.98] * 5}, max_moves_per_round=3, max_inflight_per_node=1)
    assert moved(p) == [("t0", "n1", "n2")]
    assert "n1: predicted 88% after 1 move(s), still above 80%" in p.notes


def test_shedding_stops_once_the_source_is_predicted_below_the_goal():
    # 93% with a 2-core (20%) task moved -> 73% < 80%: the second task stays.
    p = plan(
        [hot(), cool("n2"), cool("n3")], {"n1": [0.93] * 5}, max_moves_per_round=2, max_inflight_per_node=2
    )
    assert [m.task_id for m in p.moves] == ["n1-a"]


def test_limit_notes_explain_skipped_nodes():
    p = plan(three_hot(), HOT3, max_moves_per_round=1)
    assert "h2, h3: skipped, 1 moves per round reached" in p.notes
    assert p.notes[0] == "hot: h1 (sustained, 95%), h2 (sustained, 94%), h3 (sustained, 93%)"


# --- no flapping, determinism, edge cases ------------------------------------------------------


def test_a_move_does_not_invite_the_move_back():
    before = [hot(tasks=(mig("t", cpu=3),), busy=9.3), cool("n2", used=2)]
    p = plan(before, {"n1": [0.93] * 5, "n2": [0.2] * 5})
    assert moved(p) == [("t", "n1", "n2")]
    # After the move both nodes report their new utilisation for a full window.
    after = [hot(tasks=(), busy=6.3), cool("n2", used=2, tasks=(mig("t", cpu=3),))]
    history = {"n1": [0.63] * 5, "n2": [0.5] * 5}
    assert plan(after, history, last_moved={"t": NOW}).moves == ()
    assert plan(after, history, last_moved={}).moves == ()  # even without the cooldown


def test_same_input_same_plan():
    nodes = three_hot()
    first = plan(nodes, HOT3, max_moves_per_round=3)
    assert plan(list(reversed(nodes)), dict(reversed(list(HOT3.items()))), max_moves_per_round=3) == first


def test_notes_stay_short_when_many_nodes_are_hot():
    nodes = [hot(f"h{k:02d}") for k in range(30)] + [cool("c", used=0)]
    p = plan(nodes, {f"h{k:02d}": [0.95] * 5 for k in range(30)}, max_moves_per_round=1)
    assert p.notes[0].endswith("h09 (sustained, 95%) and 20 more")
    assert (
        "h01, h02, h03, h04, h05, h06, h07, h08, h09, h10 and 19 more: skipped, 1 moves per round reached"
        in p.notes
    )
    assert len(p.notes) == 2


def test_down_nodes_are_neither_sources_nor_targets_nor_the_cold_anchor():
    nodes = [hot(ready=False), hot("n2", busy=8), cool("n3", used=0, ready=False), cool("n4", used=6)]
    history = {"n1": [0.95] * 5, "n2": [0.8] * 5, "n3": [0.0] * 5, "n4": [0.6] * 5}
    assert plan(nodes, history).moves == ()


@pytest.mark.parametrize("nodes", [[], [hot(ready=False)]])
def test_empty_or_all_down(nodes):
    p = plan(nodes, {})
    assert p.moves == () and p.notes


def test_quiet_cluster_says_why_nothing_moves():
    p = plan([cool("n1", used=6), cool("n2", used=5)], {"n1": [0.6] * 5, "n2": [0.5] * 5})
    assert p.moves == ()
    assert p.notes[0].startswith("no hot node among 2 ready nodes")
