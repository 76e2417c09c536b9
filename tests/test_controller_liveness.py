"""Pure liveness transitions: suspect, down, back to ready, and the failover grace period."""

from controller.liveness import DOWN, READY, SUSPECT, transitions

KW = dict(suspect_after=2.0, down_after=4.0, grace=4.0)


def test_fresh_node_stays_ready():
    assert transitions([("n1", READY)], {"n1": 99.5}, 100.0, 0.0, **KW) == []


def test_suspect_then_down():
    assert [c[:2] for c in transitions([("n1", READY)], {"n1": 97.0}, 100.0, 0.0, **KW)] == [("n1", SUSPECT)]
    assert [c[:2] for c in transitions([("n1", SUSPECT)], {"n1": 95.0}, 100.0, 0.0, **KW)] == [("n1", DOWN)]
    assert [c[:2] for c in transitions([("n1", READY)], {"n1": 95.0}, 100.0, 0.0, **KW)] == [("n1", DOWN)]
    assert transitions([("n1", DOWN)], {"n1": 90.0}, 100.0, 0.0, **KW) == []


def test_back_to_ready_after_report():
    assert [c[:2] for c in transitions([("n1", DOWN)], {"n1": 99.9}, 100.0, 50.0, **KW)] == [("n1", READY)]
    assert [c[:2] for c in transitions([("n1", SUSPECT)], {"n1": 99.9}, 100.0, 50.0, **KW)] == [("n1", READY)]


def test_failover_grace():
    # New leader at t=100 never heard from n1: not down before the grace ends...
    assert [c[:2] for c in transitions([("n1", READY)], {}, 103.0, 100.0, **KW)] == [("n1", SUSPECT)]
    assert transitions([("n1", SUSPECT)], {}, 103.9, 100.0, **KW) == []
    # ...and down once it has.
    assert [c[:2] for c in transitions([("n1", SUSPECT)], {}, 104.1, 100.0, **KW)] == [("n1", DOWN)]
    # A node that was DOWN before the failover is not declared ready without a report.
    assert transitions([("n1", DOWN)], {}, 101.0, 100.0, **KW) == []
