"""Node commands: registration, status transitions (down -> tasks lost), cordon and drain."""

from __future__ import annotations

import pytest

from controller.state.testing import Harness, register_node, resources
from lepton.errors import FailedPrecondition, InvalidArgument, NotFound
from lepton.v1 import commands_pb2, types_pb2

TS = types_pb2.TaskState
NS = types_pb2.NodeStatus


def _types(h: Harness, prefix: str = "") -> list[str]:
    return [e.type for e in h.state.events(types=[prefix] if prefix else ())]


def test_register_node_creates_ready_node_with_allocatable():
    h = Harness()
    body = register_node("n1", cpu=8000)
    body.reserve.CopyFrom(resources(cpu=1000, mem=2**30))
    node = h.apply(body)
    assert node.status == NS.NODE_STATUS_READY
    assert node.state == "ready"
    assert node.allocatable.cpu_millis == 7000
    assert node.allocatable.memory_bytes == 63 * 2**30
    assert _types(h) == ["node.joined"]
    assert h.state.desired_for_node("n1") == (1, [])


def test_reregistration_updates_and_brings_back_to_ready():
    h = Harness()
    h.add_node("n1", cpu=4000)
    h.set_status("n1", NS.NODE_STATUS_DOWN, "missed reports")
    node = h.add_node("n1", cpu=8000, labels={"zone": "a"})
    assert node.status == NS.NODE_STATUS_READY
    assert node.capacity.cpu_millis == 8000
    assert dict(node.labels) == {"zone": "a"}
    assert len(h.state.nodes()) == 1
    assert _types(h, "node.") == ["node.joined", "node.down", "node.ready"]


STATUS_CASES = [
    ("suspect", NS.NODE_STATUS_SUSPECT, "node.suspect"),
    ("down", NS.NODE_STATUS_DOWN, "node.down"),
]


@pytest.mark.parametrize(("case", "status", "event"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_status_transitions_emit_events(case, status, event):
    h = Harness()
    h.add_node("n1")
    node = h.set_status("n1", status, "why")
    assert node.status == status
    assert _types(h)[-1] == event
    # same status again: no-op, no event
    n_events = len(h.state.events())
    h.set_status("n1", status)
    assert len(h.state.events()) == n_events
    h.set_status("n1", NS.NODE_STATUS_READY)
    assert _types(h)[-1] == "node.ready"


STATUS_REJECTIONS = [
    ("unknown node", commands_pb2.SetNodeStatus(node_id="nope", status=NS.NODE_STATUS_DOWN), NotFound),
    ("unspecified status", commands_pb2.SetNodeStatus(node_id="n1", status=0), InvalidArgument),
    ("cordon unknown", commands_pb2.CordonNode(node_id="nope"), NotFound),
    ("uncordon unknown", commands_pb2.UncordonNode(node_id="nope"), NotFound),
    ("drain unknown", commands_pb2.DrainNode(node_id="nope"), NotFound),
    ("drain negative deadline", commands_pb2.DrainNode(node_id="n1", deadline_ms=-1), InvalidArgument),
    ("cancel drain not draining", commands_pb2.DrainNode(node_id="n1", cancel=True), FailedPrecondition),
]


@pytest.mark.parametrize(("case", "body", "err"), STATUS_REJECTIONS, ids=[c[0] for c in STATUS_REJECTIONS])
def test_node_command_rejections_leave_state_unchanged(case, body, err):
    h = Harness()
    h.add_node("n1")
    before = h.state.digest()
    assert isinstance(h.apply(body), err)
    assert h.state.digest() == before


def test_down_node_loses_tasks_back_to_pending_and_notes_stale_copies():
    h = Harness()
    h.add_node("n1")
    h.add_node("n2")
    h.submit("j1", count=2)
    h.run({"j1.0": "n1", "j1.1": "n2"})
    v_before = h.state.desired_version("n1")
    h.set_status("n1", NS.NODE_STATUS_DOWN, "missed 5 reports")
    t = h.state.task("j1.0")
    assert t.state == TS.TASK_STATE_PENDING
    assert t.attempt == 2
    assert t.node_id == ""
    assert t.previous_node_id == "n1"
    assert "lost" in t.reason
    assert h.state.task("j1.1").state == TS.TASK_STATE_RUNNING  # other node untouched
    assert h.state.stale_tasks("n1") == [("j1.0", 1)]
    assert h.state.desired_for_node("n1")[1] == []
    assert h.state.desired_version("n1") > v_before
    assert [p.id for p in h.state.pending_tasks()] == ["j1.0"]
    assert "task.lost" in _types(h)
    assert h.state.node("n1").allocated.cpu_millis == 0
    # a late report from the lost copy is stale and ignored
    assert h.report("j1.0", TS.TASK_STATE_RUNNING, attempt=1) is None
    assert h.state.task("j1.0").state == TS.TASK_STATE_PENDING
    # the node comes back: re-registration clears the note and bumps the version
    h.add_node("n1")
    assert h.state.stale_tasks("n1") == []
    assert h.state.desired_version("n1") == h.index


def test_cordon_uncordon():
    h = Harness()
    h.add_node("n1")
    node = h.apply(commands_pb2.CordonNode(node_id="n1", reason="maintenance"))
    assert node.cordoned and node.state == "ready,cordoned"
    node = h.apply(commands_pb2.UncordonNode(node_id="n1"))
    assert not node.cordoned and node.state == "ready"
    assert _types(h, "node.") == ["node.joined", "node.cordoned", "node.uncordoned"]


def test_drain_of_empty_node_completes_at_once():
    h = Harness()
    h.add_node("n1")
    node = h.apply(commands_pb2.DrainNode(node_id="n1", deadline_ms=5, max_parallel=2))
    assert node.cordoned and not node.draining
    assert _types(h, "node.")[-2:] == ["node.draining", "node.drained"]


def test_drain_completes_when_last_task_leaves():
    h = Harness()
    h.add_node("n1")
    h.add_node("n2")
    h.submit("j1", count=2, batch=True)
    h.run({"j1.0": "n1", "j1.1": "n1"})
    node = h.apply(commands_pb2.DrainNode(node_id="n1", deadline_ms=99_000, max_parallel=1))
    assert node.draining and node.cordoned and node.state == "ready,cordoned,draining"
    assert h.state.drain_info("n1") == (99_000, 1)
    # a draining node takes no new work
    h.submit("j2", name="other")
    res = h.place({"j2.0": "n1"})
    assert res.skipped == [("j2.0", "node n1 is draining")]
    h.report("j1.0", TS.TASK_STATE_SUCCEEDED)
    assert h.state.node("n1").draining
    h.apply(commands_pb2.MigrateTask(task_id="j1.1", expected_attempt=1, target_node_id="n2", reason="drain"))
    node = h.state.node("n1")
    assert not node.draining and node.cordoned
    assert _types(h, "node.drained") == ["node.drained"]
    assert h.state.drain_info("n1") == (0, 0)
    assert h.state.preferred_node("j1.1") == "n2"


def test_drain_cancel_keeps_cordon():
    h = Harness()
    h.add_node("n1")
    h.submit("j1")
    h.run({"j1.0": "n1"})
    h.apply(commands_pb2.DrainNode(node_id="n1"))
    node = h.apply(commands_pb2.DrainNode(node_id="n1", cancel=True))
    assert node.cordoned and not node.draining


def test_down_node_while_draining_completes_drain():
    h = Harness()
    h.add_node("n1")
    h.submit("j1")
    h.run({"j1.0": "n1"})
    h.apply(commands_pb2.DrainNode(node_id="n1"))
    h.set_status("n1", NS.NODE_STATUS_DOWN)
    assert not h.state.node("n1").draining
    assert "node.drained" in _types(h)


def test_members_and_leader():
    h = Harness(term=3)
    assert (
        h.apply(commands_pb2.RegisterMember(id="c2", api_address="a2:7001", raft_address="a2:7101")) is None
    )
    h.apply(commands_pb2.RegisterMember(id="c1", api_address="a1:7001", raft_address="a1:7101"))
    assert [m.id for m in h.state.members()] == ["c1", "c2"]
    assert h.state.members()[0].raft_address == "a1:7101"
    h.apply(commands_pb2.LeaderChanged(leader_id="c1", api_address="a1:7001"))
    info = h.state.leader()
    assert (info.leader_id, info.api_address, info.term) == ("c1", "a1:7001", 3)
    ev = h.state.events(types=["leader."])
    assert len(ev) == 1 and ev[0].term == 3
    assert isinstance(h.apply(commands_pb2.LeaderChanged()), InvalidArgument)
    assert isinstance(h.apply(commands_pb2.RegisterMember()), InvalidArgument)


def test_register_node_from_hello():
    from controller.state import register_node_from_hello
    from lepton.v1 import agent_pb2

    hello = agent_pb2.Hello(
        node_id="n7",
        hostname="gpu-7",
        address="10.0.0.7:7200",
        capacity=resources(cpu=32_000, mem=2**37, net=25_000, gpus=4),
        reserve=resources(cpu=1000, mem=2**30),
        labels={"zone": "b"},
        gpus=[types_pb2.GpuInfo(index=0, model="H100")],
        agent_version="0.1.0",
    )
    h = Harness()
    node = h.apply(register_node_from_hello(hello))
    assert node.id == "n7" and node.hostname == "gpu-7" and node.agent_version == "0.1.0"
    assert node.allocatable.gpus == 4 and node.gpus[0].model == "H100"
    assert dict(node.labels) == {"zone": "b"}
