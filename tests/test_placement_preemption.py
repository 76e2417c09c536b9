"""Table-driven tests of preemption: which victims, on which node, and when never."""

from __future__ import annotations

import itertools
import random

import pytest

from controller.placement import Policy, Preemption, place
from controller.placement.builders import node, req, res, running, view
from controller.placement.preempt import _search


def victims(plan) -> list[str]:
    return [p.victim_task_id for p in plan.preemptions]


def where(plan) -> dict[str, str]:
    return {a.task_id: a.node_id for a in plan.assignments}


CASES = [
    # name, tasks running on one 8-core node (id, prio, cores), incoming (prio, cores), expected victims
    ("fewest evictions beats lower total priority", [("a", 1, 2), ("b", 1, 2), ("c", 3, 4)], (5, 4), ["c"]),
    ("lowest total priority among equal counts", [("a", 1, 4), ("c", 2, 4)], (5, 4), ["a"]),
    ("two needed: cheapest pair", [("a", 1, 2), ("b", 2, 2), ("c", 0, 2), ("d", 4, 2)], (5, 4), ["a", "c"]),
    ("equal priority is never preempted", [("a", 1, 2), ("c", 2, 6)], (2, 4), []),
    ("higher priority is never preempted", [("a", 1, 2), ("c", 9, 6)], (2, 4), []),
    ("no victim needed when it fits", [("a", 1, 4)], (5, 4), []),
    ("equal cost: task id decides", [("b", 1, 4), ("a", 1, 4)], (5, 4), ["a"]),
]


@pytest.mark.parametrize(("name", "tasks", "incoming", "expected"), CASES, ids=[c[0] for c in CASES])
def test_victim_choice_on_one_node(name, tasks, incoming, expected):
    n = node("n1", cpu=8, mem=64, tasks=tuple(running(t, prio=p, cpu=c, mem=1) for t, p, c in tasks))
    prio, cores = incoming
    plan = place(view(n), [req("new", prio=prio, cpu=cores, mem=1)])
    assert victims(plan) == expected
    fits_without = sum(c for _, _, c in tasks) + cores <= 8
    if expected or fits_without:
        assert where(plan) == {"new": "n1"}
        assert all(p.for_task_id == "new" and p.node_id == "n1" for p in plan.preemptions)
    else:
        assert plan.unplaced[0].reason == "insufficient cpu on 1 node"


def test_the_node_with_the_cheapest_set_is_chosen():
    n1 = node("n1", cpu=4, tasks=(running("a", prio=0, cpu=2), running("b", prio=0, cpu=2)))
    n2 = node("n2", cpu=4, tasks=(running("c", prio=3, cpu=4),))
    plan = place(view(n1, n2), [req("new", prio=5, cpu=4)])
    assert plan.preemptions == (Preemption("c", "n2", "new"),)
    assert where(plan) == {"new": "n2"}


def test_equal_cost_on_two_nodes_goes_to_the_lowest_node_id():
    nodes = [node(nid, cpu=4, tasks=(running(f"v{nid}", prio=1, cpu=4),)) for nid in ("n2", "n1")]
    plan = place(view(*nodes), [req("new", prio=5, cpu=4)])
    assert plan.preemptions == (Preemption("vn1", "n1", "new"),)


def test_equal_cost_found_later_in_bound_order_still_goes_to_the_lower_node_id():
    # n2 looks cheaper by its bound (a priority-0 task) but costs 0 + 4 = 4, like n1's 2 + 2.
    n1 = node("n1", cpu=8, tasks=tuple(running(f"a{k}", prio=2, cpu=2) for k in range(4)))
    n2 = node(
        "n2",
        cpu=8,
        tasks=(running("b0", prio=0, cpu=2), *(running(f"b{k}", prio=4, cpu=2) for k in (1, 2, 3))),
    )
    plan = place(view(n1, n2), [req("new", prio=9, cpu=4)])
    assert victims(plan) == ["a0", "a1"] and where(plan) == {"new": "n1"}


def test_victims_must_cover_every_short_dimension():
    tasks = (running("cpuhog", prio=0, cpu=6, net=0), running("nethog", prio=1, cpu=1, net=900))
    n = node("n1", cpu=8, net=1000, tasks=tasks)
    plan = place(view(n), [req("new", prio=5, cpu=1, net=500)])
    assert victims(plan) == ["nethog"]  # evicting the cheaper cpuhog frees no network


def test_live_usage_shrinks_by_the_victims_request():
    # Reserved 4 cores but 7 busy: evicting the 4-core task leaves 3 in use, room for 4 more.
    n = node("n1", cpu=8, live=res(cpu=7), tasks=(running("v", prio=0, cpu=4),))
    plan = place(view(n), [req("new", prio=1, cpu=4)])
    assert victims(plan) == ["v"] and where(plan) == {"new": "n1"}
    plan = place(view(n), [req("new", prio=1, cpu=5.5)])  # 3 + 5.5 > 8
    assert victims(plan) == [] and where(plan) == {}


def test_tasks_placed_in_this_plan_are_never_preempted():
    plan = place(
        view(node("n1", cpu=4)), [req("first", prio=1, order=0, cpu=4), req("second", prio=1, order=1, cpu=4)]
    )
    assert where(plan) == {"first": "n1"} and plan.preemptions == ()


def test_a_victim_is_evicted_once_and_its_room_is_reused():
    n = node("n1", cpu=4, tasks=(running("v", prio=0, cpu=4),))
    plan = place(view(n), [req("x", prio=5, order=0, cpu=2), req("y", prio=5, order=1, cpu=2)])
    assert victims(plan) == ["v"]
    assert where(plan) == {"x": "n1", "y": "n1"}


def test_non_resource_filters_still_apply_to_preemption():
    cordoned = node("n1", cpu=4, schedulable=False, tasks=(running("v", prio=0, cpu=4),))
    plan = place(view(cordoned), [req("new", prio=5, cpu=4)])
    assert plan.preemptions == () and plan.unplaced[0].reason == "cordoned: 1"


def test_preemption_can_be_turned_off():
    n = node("n1", cpu=4, tasks=(running("v", prio=0, cpu=4),))
    plan = place(view(n), [req("new", prio=5, cpu=4)], preemption=False)
    assert plan.preemptions == () and plan.unplaced[0].reason == "insufficient cpu on 1 node"


def brute_force(cands, deficit):
    for k in range(1, len(cands) + 1):
        best = None
        for combo in itertools.combinations(cands, k):
            if all(sum(c[2][d] for c in combo) >= deficit[d] for d in range(4) if deficit[d] > 0):
                p = sum(c[0] for c in combo)
                if best is None or p < best:
                    best = p
        if best is not None:
            return k, best
    return None


@pytest.mark.parametrize("seed", range(40))
def test_victim_search_is_exact_against_brute_force(seed):
    rng = random.Random(seed)
    cands = sorted(
        (
            (rng.randint(0, 5), f"t{i}", (float(rng.randint(0, 8)), float(rng.randint(0, 8)), 0.0, 0.0), i)
            for i in range(rng.randint(1, 9))
        ),
        key=lambda c: (c[0], c[1]),
    )
    deficit = [float(rng.randint(-2, 14)), float(rng.randint(-2, 14)), -1.0, 0.0]
    found = _search(cands, deficit, (10**9, float("inf")))
    expected = brute_force(cands, deficit)
    assert (found and (found[0], found[1])) == expected


@pytest.mark.parametrize("seed", range(12))
def test_preemption_bursts_agree_with_the_brute_force_reference(seed):
    # Full nodes of mixed-priority work and a burst that mostly needs evictions: exercises the
    # bound ordering, the per-node memo and the tie rules against plain enumeration.
    from .test_placement import reference_place

    rng = random.Random(seed)
    nodes = []
    for i in range(8):
        tasks, used = [], 0
        while used < 7:
            c = rng.choice((1, 1, 2, 3))
            tasks.append(
                running(f"o{i}.{len(tasks)}", f"old{rng.randint(0, 3)}", prio=rng.randint(0, 4), cpu=c, mem=1)
            )
            used += c
        nodes.append(node(f"n{i}", cpu=used + rng.choice((0, 1)), mem=64, tasks=tuple(tasks)))
    burst = [
        req(f"hi.{k}", f"hi{k % 3}", prio=rng.randint(2, 6), order=k, cpu=rng.randint(1, 5))
        for k in range(30)
    ]
    plan = place(view(*nodes), burst, packing=False)
    expected, evicted = reference_place(nodes, burst, Policy.BINPACK)
    assert [(a.task_id, a.node_id) for a in plan.assignments] == expected
    assert sorted(victims(plan)) == evicted
    assert len(plan.preemptions) > 0
