"""A real 3-controller Lepton cluster in network namespaces: election, leader loss, isolation.

Each controller runs in its own namespace with its own address, so Raft
traffic crosses real (virtual) links and partitions are iptables rules, not
mocks. Skipped until controller/main.py and agent/main.py exist.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns
pytest_plugins = ["tests.support_netns.fixtures"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worked-example.yaml"
ELECTION_DEADLINE = 60.0  # generous: 8 engineers share 2 cores; this is a liveness bound, not a timing claim


def test_three_controllers_elect_and_survive_leader_loss(lepton_netns):
    lep = lepton_netns(controllers=3, agents=1)
    leader = lep.find_leader(timeout=ELECTION_DEADLINE)
    assert leader, "no leader agreed by all three controllers\n" + lep.logs()

    # SIGKILL the leader's whole host: the other two must elect one of themselves.
    lep.net.kill(leader)
    survivors = [c for c in lep.controllers if c != leader]
    new_leader = lep.find_leader(among=survivors, timeout=ELECTION_DEADLINE)
    assert new_leader in survivors, f"no new leader after killing {leader}\n" + lep.logs()

    # Bring the old leader back with the same data dir: it rejoins as a follower of the new term.
    lep.net.restart(leader)
    assert lep.find_leader(timeout=ELECTION_DEADLINE) in lep.controllers, lep.logs()


def test_isolated_leader_is_replaced_and_rejoins(lepton_netns):
    lep = lepton_netns(controllers=3, agents=0)
    leader = lep.find_leader(timeout=ELECTION_DEADLINE)
    assert leader, lep.logs()
    lep.net.isolate(leader)
    survivors = [c for c in lep.controllers if c != leader]
    new_leader = lep.find_leader(among=survivors, timeout=ELECTION_DEADLINE)
    assert new_leader in survivors, lep.logs()
    lep.net.heal()
    # After healing, all three agree again (check-quorum made the old leader step down).
    # (pre-vote keeps the returning replica from deposing the new leader, but any agreed leader passes).
    assert lep.find_leader(timeout=ELECTION_DEADLINE) in lep.controllers, lep.logs()


def test_agent_registers_through_namespaces(lepton_netns):
    lep = lepton_netns(controllers=3, agents=2)
    leader = lep.find_leader(timeout=ELECTION_DEADLINE)
    assert leader, lep.logs()
    deadline = time.monotonic() + ELECTION_DEADLINE
    status = None
    while time.monotonic() < deadline:
        status = lep.cluster_status(leader)
        if status is not None and status.nodes_ready == 2:
            break
        time.sleep(0.2)
    assert status is not None and status.nodes_ready == 2, f"{status}\n{lep.logs()}"


def running_tasks(lep, among):
    doc = lep.ctl("tasks", "list", among=among)
    if doc is None:
        return None
    tasks = doc.get("tasks", doc) if isinstance(doc, dict) else doc
    return {t["id"]: t["node"] for t in tasks if t.get("state") == "running"}


def poll(fn, deadline_s=ELECTION_DEADLINE):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if value := fn():
            return value
        time.sleep(0.3)
    return None


def test_worked_example_keeps_running_when_the_leader_is_isolated(lepton_netns):
    lep = lepton_netns(controllers=3, agents=2)  # agents: the worked example's 100-core node
    leader = lep.find_leader(timeout=ELECTION_DEADLINE)
    assert leader, lep.logs()
    assert lep.ctl("jobs", "submit", str(EXAMPLE)) is not None, lep.logs()
    before = poll(lambda: (r := running_tasks(lep, lep.controllers)) and len(r) == 4 and r)
    assert before, lep.logs()

    # The leader loses every link: controllers and agents alike.
    lep.net.isolate(leader)
    survivors = [c for c in lep.controllers if c != leader]
    new_leader = lep.find_leader(among=survivors, timeout=ELECTION_DEADLINE)
    assert new_leader in survivors, lep.logs()
    # Agents reconnect to the new leader; nothing is rescheduled, nothing is lost.
    after = poll(lambda: (r := running_tasks(lep, survivors)) and len(r) == 4 and r)
    assert after == before, lep.logs()
    lep.net.heal()
    assert lep.find_leader(timeout=ELECTION_DEADLINE) in lep.controllers, lep.logs()
