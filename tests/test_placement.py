"""Table-driven tests of `place()`: fit, live usage, constraints, policies, order, reasons, determinism."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from controller.placement import Constraint, Policy, Res, place
from controller.placement.builders import GiB, node, req, res, running, view
from controller.placement.constraints import label_matches
from controller.placement.scoring import Scorer
from controller.placement.state import PlanState


def where(plan) -> dict[str, str]:
    return {a.task_id: a.node_id for a in plan.assignments}


def reasons(plan) -> dict[str, str]:
    return {u.task_id: u.reason for u in plan.unplaced}


# --- fit per dimension, reservations and live usage -------------------------------------------

FIT_CASES = [
    # name, node reserved, node live, request, expected reason ("" = placed)
    ("cpu exact fit", res(cpu=3), Res(), res(cpu=1), ""),
    ("cpu one milli over", res(cpu=3), Res(), Res(cpu_millis=1001), "insufficient cpu on 1 node"),
    ("memory fits", res(mem=6), Res(), res(mem=2), ""),
    ("memory over", res(mem=6), Res(), res(mem=2) + Res(memory_bytes=1), "insufficient memory on 1 node"),
    ("network fits", res(net=600), Res(), res(net=400), ""),
    ("network over", res(net=600), Res(), res(net=401), "insufficient network on 1 node"),
    ("gpu fits", Res(), Res(), res(gpus=1), ""),
    ("gpu over", Res(), Res(), res(gpus=2), "insufficient gpus on 1 node"),
    ("live beyond reservation blocks", res(cpu=1), res(cpu=3.5), res(cpu=1), "insufficient cpu on 1 node"),
    ("live beyond reservation leaves room", res(cpu=1), res(cpu=3.5), res(cpu=0.5), ""),
    ("reservation beyond live blocks", res(cpu=3), res(cpu=1), res(cpu=1.5), "insufficient cpu on 1 node"),
    (
        "live network over allocatable blocks a cpu-only task",
        Res(),
        res(net=1200),
        res(cpu=1),
        "insufficient network on 1 node",
    ),
    (
        "two dimensions short",
        res(cpu=4, mem=8),
        Res(),
        res(cpu=1, mem=1),
        "insufficient cpu on 1 node; insufficient memory on 1 node",
    ),
]


@pytest.mark.parametrize(
    ("name", "reserved", "live", "ask", "reason"), FIT_CASES, ids=[c[0] for c in FIT_CASES]
)
def test_fit_per_dimension(name, reserved, live, ask, reason):
    n = node("n1", cpu=4, mem=8, net=1000, gpus=1, reserved=reserved, live=live)
    task = req("t1")
    task = type(task)(task.task_id, task.job_id, 0, 0, ask)
    plan = place(view(n), [task])
    if reason:
        assert where(plan) == {}
        assert reasons(plan) == {"t1": reason}
    else:
        assert where(plan) == {"t1": "n1"}
        assert plan.unplaced == ()


def test_later_tasks_see_earlier_reservations():
    plan = place(view(node("n1", cpu=4)), [req(f"j.{i}", order=i, cpu=2) for i in range(3)])
    assert where(plan) == {"j.0": "n1", "j.1": "n1"}
    assert reasons(plan) == {"j.2": "insufficient cpu on 1 node"}


# --- constraints ------------------------------------------------------------------------------

LABELS = {"a": {"zone": "a", "disk": "ssd"}, "b": {"zone": "b"}, "c": {}}

CONSTRAINT_CASES = [
    # constraint, nodes that match (of a, b, c)
    (Constraint("zone", "=", ("a",)), {"a"}),
    (Constraint("zone", "!=", ("a",)), {"b", "c"}),  # a node without the label matches !=
    (Constraint("zone", "in", ("a", "b")), {"a", "b"}),
    (Constraint("zone", "in", ("x",)), set()),
    (Constraint("zone", "not_in", ("a",)), {"b", "c"}),
    (Constraint("disk", "exists"), {"a"}),
    (Constraint("zone", "not_exists"), {"c"}),
    (Constraint("zone", "~", ("a",)), set()),  # unknown op matches nothing (a reason, not an exception)
]


@pytest.mark.parametrize(
    ("constraint", "matching"),
    CONSTRAINT_CASES,
    ids=[f"{c.key}{c.op}{c.values}" for c, _ in CONSTRAINT_CASES],
)
def test_constraint_ops(constraint, matching):
    assert {nid for nid, lb in LABELS.items() if label_matches(lb, constraint)} == matching
    nodes = [node(nid, labels=lb) for nid, lb in LABELS.items()]
    # Three distinct-node tasks land on exactly the matching nodes.
    tasks = [req(f"j.{i}", order=i, constraints=(constraint,), distinct=True) for i in range(3)]
    plan = place(view(*nodes), tasks)
    assert set(where(plan).values()) == matching
    assert len(plan.unplaced) == 3 - len(matching)


def test_constraint_values_given_as_a_list_still_work():
    c = Constraint("zone", "in", ["a", "b"])
    assert c.values == ("a", "b")
    nodes = [node(nid, labels=lb) for nid, lb in LABELS.items()]
    assert place(view(*nodes), [req("t", constraints=(c,))]).assignments[0].node_id == "a"


def test_constraint_reason_names_the_selector():
    nodes = [node(nid, labels=lb) for nid, lb in LABELS.items()]
    plan = place(view(*nodes), [req("t", constraints=(Constraint("zone", "in", ("x", "y")),))])
    assert reasons(plan) == {"t": "constraint zone in x,y: 3"}
    assert plan.unplaced[0].counts == {"constraint zone in x,y": 3}


def test_multiple_constraints_each_node_counted_once_under_the_first_it_fails():
    nodes = [node(nid, labels=lb) for nid, lb in LABELS.items()]
    cs = (Constraint("zone", "exists"), Constraint("disk", "=", ("nvme",)))
    plan = place(view(*nodes), [req("t", constraints=cs)])
    assert reasons(plan) == {"t": "constraint zone exists: 1; constraint disk=nvme: 2"}


# --- distinct nodes, GPU model, avoided nodes -------------------------------------------------


def test_distinct_nodes_counts_tasks_placed_earlier_in_the_plan_and_already_running():
    nodes = [node("n1", tasks=(running("web.0", "web"),)), node("n2"), node("n3")]
    tasks = [req(f"web.{i}", "web", order=i, distinct=True) for i in range(1, 4)]
    plan = place(view(*nodes), tasks)
    assert sorted(where(plan).values()) == ["n2", "n3"]
    assert reasons(plan) == {"web.3": "distinct nodes: 3"}


def test_without_distinct_nodes_tasks_of_a_job_share_a_node():
    plan = place(view(node("n1"), node("n2")), [req(f"web.{i}", "web", order=i) for i in range(3)])
    assert set(where(plan).values()) == {"n1"}


GPU_NODES = [
    node("g1", gpus=8, gpu_models=("NVIDIA A100-SXM4-40GB",) * 8),
    node("g2", gpus=8, gpu_models=("NVIDIA H100 80GB HBM3",) * 8),
    node("c1"),
]


GPU_CASES = [
    # wanted model, (node it lands on | None), reason
    ("h100", "g2", ""),  # case-insensitive substring
    ("A100", "g1", ""),
    ("NVIDIA", "g1", ""),  # both match; bin-pack tie -> lowest id
    ("", "g1", ""),  # no model asked: any node with a free GPU
    # The CPU node has no such model either: the model filter comes before resources.
    ("B200", None, "gpu model B200: 3"),
]


@pytest.mark.parametrize(("model", "node_id", "reason"), GPU_CASES, ids=[c[0] or "any" for c in GPU_CASES])
def test_gpu_model_substring(model, node_id, reason):
    plan = place(view(*GPU_NODES), [req("t", gpus=1, gpu_model=model)])
    assert where(plan) == ({"t": node_id} if node_id else {})
    assert reasons(plan) == ({"t": reason} if reason else {})


def test_avoid_nodes():
    plan = place(view(node("n1"), node("n2")), [req("t", avoid=("n1",))])
    assert where(plan) == {"t": "n2"}
    plan = place(view(node("n1")), [req("t", avoid=("n1",))])
    assert reasons(plan) == {"t": "avoided: 1"}


# --- policies and tie-breaking ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Policy.BINPACK, "n2"), (Policy.SPREAD, "n1"), ("binpack", "n2"), ("spread", "n1")],
)
def test_policy_binpack_fills_spread_evens(policy, expected):
    nodes = [node("n1", cpu=16, mem=64), node("n2", cpu=16, mem=64, reserved=res(cpu=8, mem=32))]
    plan = place(view(*nodes), [req("t", cpu=2, mem=4)], policy)
    assert where(plan) == {"t": expected}


def test_binpack_scores_most_allocated_after_placement_over_requested_dimensions():
    nodes = [node("n1", cpu=10, mem=10, reserved=res(cpu=5, mem=0))]
    plan = place(view(*nodes), [req("t", cpu=1, mem=1)])
    # cpu (5+1)/10 and memory (0+1)/10, equally weighted; network not requested, not scored.
    assert plan.assignments[0].score == pytest.approx(0.35)
    plan = place(view(*nodes), [req("t", cpu=1, mem=1)], Policy.SPREAD)
    assert plan.assignments[0].score == pytest.approx(0.65)


@pytest.mark.parametrize("policy", list(Policy))
def test_ties_go_to_the_lowest_node_id_whatever_the_input_order(policy):
    plan = place(view(node("n3"), node("n1"), node("n2")), [req("t")], policy)
    assert where(plan) == {"t": "n1"}


def test_spread_distributes_binpack_concentrates():
    nodes = [node(f"n{i}", cpu=8) for i in range(4)]
    tasks = [req(f"j.{i}", order=i, cpu=1) for i in range(4)]
    assert len(set(where(place(view(*nodes), tasks, Policy.SPREAD)).values())) == 4
    assert len(set(where(place(view(*nodes), tasks, Policy.BINPACK)).values())) == 1


def test_unschedulable_and_down_nodes_take_nothing():
    nodes = [
        node("n1", schedulable=False),
        node("n2", ready=False),
        node("n3", ready=False, schedulable=False),
    ]
    plan = place(view(*nodes), [req("t")])
    assert reasons(plan) == {"t": "cordoned: 1; down: 2"}


def test_no_nodes():
    plan = place(view(), [req("t")])
    assert reasons(plan) == {"t": "no nodes"}
    assert plan.unplaced[0].counts == {}


# --- order ------------------------------------------------------------------------------------

ORDER_CASES = [
    # name, tasks as (id, prio, order), the one that wins the single slot
    ("higher priority wins over earlier submission", [("low", 1, 0), ("high", 5, 1)], "high"),
    ("same priority: earlier submission wins", [("late", 3, 7), ("early", 3, 2)], "early"),
    ("negative priority loses", [("neg", -1, 0), ("zero", 0, 1)], "zero"),
    ("same priority and order: task id", [("b", 1, 1), ("a", 1, 1)], "a"),
]


@pytest.mark.parametrize(("name", "tasks", "winner"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_priority_then_submission_order(name, tasks, winner):
    pending = [req(tid, prio=p, order=o, cpu=4) for tid, p, o in tasks]
    for ordering in (pending, pending[::-1]):
        plan = place(view(node("n1", cpu=4)), ordering, preemption=False)
        assert where(plan) == {winner: "n1"}


# --- reasons ----------------------------------------------------------------------------------


def test_reasons_aggregate_over_nodes_in_a_fixed_order():
    zone_a = {"zone": "a"}
    nodes = [
        node("cpu1", cpu=1, labels=zone_a),
        node("cpu2", cpu=1, labels=zone_a),
        node("net1", net=100, labels=zone_a),
        node("net2", net=100, labels=zone_a),
        node("net3", net=100, labels=zone_a),
        node("cord", labels=zone_a, schedulable=False),
        node("down", labels=zone_a, ready=False),
        *[node(f"zb{i}", labels={"zone": "b"}) for i in range(4)],
    ]
    plan = place(view(*nodes), [req("t", cpu=2, net=500, constraints=(Constraint("zone", "=", ("a",)),))])
    assert reasons(plan) == {
        "t": "insufficient cpu on 2 nodes; insufficient network on 3 nodes; cordoned: 1; down: 1; constraint zone=a: 4"
    }
    assert plan.unplaced[0].counts == {
        "down": 1,
        "cordoned": 1,
        "constraint zone=a": 4,
        "insufficient cpu": 2,
        "insufficient network": 3,
    }


# --- the idea's worked example (design brief § 1) ---------------------------------------------


def test_worked_example_one_node_four_tasks_network_binds():
    machine = node("machine", cpu=100, mem=1024, net=10_000)
    tasks = [
        req("medical", prio=1, order=0, cpu=10, mem=50, net=2_000),
        req("financial", prio=2, order=1, cpu=20, mem=100, net=4_000),
        req("manufacturing", prio=3, order=2, cpu=30, mem=150, net=6_000),
        req("transportation", prio=4, order=3, cpu=40, mem=200, net=8_000),
    ]
    plan = place(view(machine), tasks)
    # Highest priority first: transportation takes 8 of 10 Gbit/s. Manufacturing (6) and
    # financial (4) no longer fit; nothing running is of lower priority, so nothing is preempted.
    # Medical (2) fits exactly into the 2 Gbit/s left. cpu (50/100) and memory (250/1024 GiB)
    # never bind.
    assert [a.task_id for a in plan.assignments] == ["transportation", "medical"]
    assert plan.preemptions == ()
    assert reasons(plan) == {
        "manufacturing": "insufficient network on 1 node",
        "financial": "insufficient network on 1 node",
    }
    # Submitted again with the first two already running (priority 4 and 1), manufacturing
    # (priority 3) may preempt medical (priority 1) but still not fit: 8 + 6 > 10. Nothing moves.
    running_now = node(
        "machine",
        cpu=100,
        mem=1024,
        net=10_000,
        tasks=(
            running("transportation", prio=4, cpu=40, mem=200, net=8_000),
            running("medical", prio=1, cpu=10, mem=50, net=2_000),
        ),
    )
    again = place(view(running_now), [tasks[1], tasks[2]])
    assert again.assignments == () and again.preemptions == ()
    assert reasons(again) == {
        "manufacturing": "insufficient network on 1 node",
        "financial": "insufficient network on 1 node",
    }


# --- determinism and the incremental score cache ----------------------------------------------


def random_instance(seed: int, n_nodes: int = 25, n_tasks: int = 300):
    rng = random.Random(seed)
    nodes = []
    for i in range(n_nodes):
        tasks = tuple(
            running(f"old{i}.{k}", f"old{k % 3}", prio=rng.randint(0, 3), cpu=rng.choice((1, 2)), mem=2)
            for k in range(rng.randint(0, 3))
        )
        nodes.append(
            node(
                f"n{i:03d}",
                cpu=rng.choice((8, 16, 32)),
                mem=rng.choice((32, 64)),
                net=rng.choice((1000, 10_000)),
                gpus=rng.choice((0, 0, 4)),
                labels={"zone": rng.choice("abc")},
                live=res(cpu=rng.random() * 8),
                schedulable=rng.random() > 0.05,
                ready=rng.random() > 0.05,
                tasks=tasks,
            )
        )
    tasks = []
    for k in range(n_tasks):
        job = f"job{k // 10}"
        cs = (Constraint("zone", "in", ("a", "b")),) if (k // 10) % 4 == 0 else ()
        tasks.append(
            req(
                f"{job}.{k % 10}",
                job,
                prio=rng.randint(0, 5),
                order=k,
                cpu=rng.choice((0.5, 1, 2, 4)),
                mem=rng.choice((1, 4, 8)),
                net=rng.choice((0, 100, 500)),
                gpus=1 if (k // 10) % 7 == 0 else 0,
                constraints=cs,
                distinct=(k // 10) % 5 == 0,
            )
        )
    return nodes, tasks


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_input_same_plan_whatever_the_input_order(seed, policy):
    nodes, tasks = random_instance(seed)
    first = place(view(*nodes), tasks, policy)
    rng = random.Random(seed)
    rng.shuffle(nodes)
    rng.shuffle(tasks)
    assert place(view(*nodes), tasks, policy) == first
    assert first.assignments and first.unplaced and first.preemptions  # every outcome is exercised


@pytest.mark.parametrize("seed", [4, 5])
def test_plan_never_overcommits_a_node(seed):
    nodes, tasks = random_instance(seed)
    plan = place(view(*nodes), tasks)
    by_id = {n.id: n for n in nodes}
    req_of = {t.task_id: t.resources for t in tasks}
    evicted = {p.victim_task_id for p in plan.preemptions}
    added: dict[str, Res] = {}
    for a in plan.assignments:
        added[a.node_id] = added.get(a.node_id, Res()) + req_of[a.task_id]
    for nid, extra in added.items():
        n = by_id[nid]
        freed = Res()
        for t in n.tasks:
            if t.task_id in evicted:
                freed = freed + t.resources
        for d, (r, lv, al, x, f) in enumerate(
            zip(
                n.reserved.as_tuple(),
                n.live_used.as_tuple(),
                n.allocatable.as_tuple(),
                extra.as_tuple(),
                freed.as_tuple(),
                strict=True,
            )
        ):
            assert max(r, lv) - f + x <= al, (nid, d)
        assert n.ready and n.schedulable


def test_incremental_scores_equal_a_full_recompute():
    nodes, tasks = random_instance(9)
    for policy in Policy:
        state = PlanState(view(*nodes))
        scorer = Scorer(state, policy)
        shapes = [scorer.shape_for(t) for t in tasks[:40]]
        for k, shape in enumerate(shapes):
            i, _ = scorer.best(shape)
            if i >= 0:
                state.assign(i, shape.req, tasks[k].job_id)
            other = shapes[(k * 7) % len(shapes)]
            np.testing.assert_array_equal(scorer.scores(other), scorer.full(other))


def test_memory_in_bytes_stays_exact_at_tebibyte_scale():
    n = node("big", cpu=1, mem=4096)
    t = req("t", cpu=0, mem=0)
    t = type(t)("t", "t", 0, 0, Res(memory_bytes=4096 * GiB))
    assert where(place(view(n), [t])) == {"t": "big"}
    t2 = type(t)("t", "t", 0, 0, Res(memory_bytes=4096 * GiB + 1))
    assert reasons(place(view(n), [t2])) == {"t": "insufficient memory on 1 node"}


# --- a slow, obvious reference planner: the fast one must agree with it exactly ----------------


def reference_place(nodes, tasks, policy):
    """Straight loops over nodes and subsets, the rules of docs/placement.md, nothing cached."""
    nodes = sorted(nodes, key=lambda n: n.id)
    used = {
        n.id: [max(r, lv) for r, lv in zip(n.reserved.as_tuple(), n.live_used.as_tuple(), strict=True)]
        for n in nodes
    }
    alive = {n.id: list(n.tasks) for n in nodes}
    jobs_on = {n.id: [t.job_id for t in n.tasks] for n in nodes}
    out, evicted = [], []

    def passes(n, t):
        return (
            n.ready
            and n.schedulable
            and all(label_matches(n.labels, c) for c in t.constraints)
            and (not t.gpu_model or any(t.gpu_model.lower() in m.lower() for m in n.gpu_models))
            and n.id not in t.avoid_nodes
            and not (t.distinct_nodes and t.job_id in jobs_on[n.id])
        )

    def fits(n, t, freed=(0, 0, 0, 0)):
        rq = t.resources.as_tuple()
        return all(used[n.id][d] - freed[d] + rq[d] <= n.allocatable.as_tuple()[d] for d in range(4))

    def score(n, t):
        rq = [float(x) for x in t.resources.as_tuple()]
        al = n.allocatable.as_tuple()
        total = wsum = 0.0
        for d in range(4):
            if rq[d] > 0:
                total += ((float(used[n.id][d]) + rq[d]) * (1.0 / al[d] if al[d] > 0 else 0.0)) * 1.0
                wsum += 1.0
        if wsum:
            total *= 1.0 / wsum
        return 1.0 - total if policy is Policy.SPREAD else total

    def take(n, t):
        for d, x in enumerate(t.resources.as_tuple()):
            used[n.id][d] += x
        jobs_on[n.id].append(t.job_id)

    for t in sorted(tasks, key=lambda t: (-t.priority, t.order, t.task_id)):
        ok = [n for n in nodes if passes(n, t) and fits(n, t)]
        if ok:
            top = max(score(n, t) for n in ok)
            best = next(n for n in ok if score(n, t) == top)  # ties: lowest id
            out.append((t.task_id, best.id))
            take(best, t)
            continue
        choice = None
        for n in nodes:
            if not passes(n, t):
                continue
            cands = sorted(
                (v for v in alive[n.id] if v.priority < t.priority), key=lambda v: (v.priority, v.task_id)
            )
            for k in range(1, len(cands) + 1):
                found = None
                for combo in itertools.combinations(cands, k):
                    freed = [sum(v.resources.as_tuple()[d] for v in combo) for d in range(4)]
                    if fits(n, t, freed):
                        p = sum(v.priority for v in combo)
                        if found is None or p < found[0]:
                            found = (p, combo)
                if found:
                    if choice is None or (k, found[0]) < (choice[0], choice[1]):
                        choice = (k, found[0], n, found[1])
                    break
        if choice is None:
            continue
        _, _, n, combo = choice
        for v in combo:
            alive[n.id].remove(v)
            jobs_on[n.id].remove(v.job_id)
            for d, x in enumerate(v.resources.as_tuple()):
                used[n.id][d] -= x
            evicted.append(v.task_id)
        out.append((t.task_id, n.id))
        take(n, t)
    return out, sorted(evicted)


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("seed", range(6))
def test_fast_planner_agrees_with_the_reference(seed, policy):
    nodes, tasks = random_instance(seed, n_nodes=12, n_tasks=120)
    plan = place(view(*nodes), tasks, policy, packing=False)
    expected, evicted = reference_place(nodes, tasks, policy)
    assert [(a.task_id, a.node_id) for a in plan.assignments] == expected
    assert sorted(p.victim_task_id for p in plan.preemptions) == evicted


def test_the_reference_comparison_exercises_preemption_and_unplaced_tasks():
    outcomes = [place(view(*n), t, packing=False) for n, t in (random_instance(s, 12, 120) for s in range(6))]
    assert sum(len(p.preemptions) for p in outcomes) > 0
    assert sum(len(p.unplaced) for p in outcomes) > 0
