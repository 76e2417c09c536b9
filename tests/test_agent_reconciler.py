"""Unit tests of the agent's pure desired-vs-running diff and version rule (agent.reconciler)."""

from __future__ import annotations

import pytest

from agent.reconciler import Have, Plan, accept_version, diff

RUN = Have(running=True)
DONE = Have(running=False)


@pytest.mark.parametrize(
    ("desired", "have", "plan"),
    [
        ([], {}, Plan()),
        ([("a", 1)], {}, Plan(start=[("a", 1)])),
        ([("a", 1)], {("a", 1): RUN}, Plan()),  # idempotent
        ([], {("a", 1): RUN}, Plan(stop=[("a", 1)])),
        # A newer attempt replaces the older one: stop old, start new.
        ([("a", 2)], {("a", 1): RUN}, Plan(start=[("a", 2)], stop=[("a", 1)])),
        # Finished tasks are not restarted for the same attempt (restarts are the controller's call)...
        ([("a", 1)], {("a", 1): DONE}, Plan()),
        # ...and are forgotten once no longer desired.
        ([], {("a", 1): DONE}, Plan(forget=[("a", 1)])),
        # Duplicates in the desired set start once, in order.
        ([("b", 1), ("a", 1), ("b", 1)], {}, Plan(start=[("b", 1), ("a", 1)])),
        (
            [("keep", 1), ("new", 1)],
            {("keep", 1): RUN, ("gone", 3): RUN, ("old", 1): DONE},
            Plan(start=[("new", 1)], stop=[("gone", 3)], forget=[("old", 1)]),
        ),
    ],
)
def test_diff(desired, have, plan):
    assert diff(desired, have) == plan


def test_applying_the_result_converges():
    have = {("x", 1): RUN, ("y", 1): RUN}
    desired = [("y", 2), ("z", 1)]
    p = diff(desired, have)
    for k in p.stop:
        have[k] = DONE
    for k in p.start:
        have[k] = RUN
    for k in p.forget:
        del have[k]
    second = diff(desired, have)
    assert second.start == [] and second.stop == []
    assert diff(desired, {k: v for k, v in have.items() if k not in second.forget}).empty


@pytest.mark.parametrize(
    ("last", "incoming", "ok"), [(0, 1, True), (5, 5, True), (5, 6, True), (5, 4, False)]
)
def test_accept_version(last, incoming, ok):
    assert accept_version(last, incoming) is ok
