"""controller/sessions.py: which agent streams wake after applied commands."""

from __future__ import annotations

from controller.sessions import SessionRegistry
from controller.state.testing import Harness
from lepton.v1 import types_pb2


def _registry(h: Harness) -> SessionRegistry:
    reg = SessionRegistry()
    reg.desired_version = h.state.desired_version
    reg.desired_changes = h.state.take_desired_changes
    return reg


def _woken(reg: SessionRegistry) -> set[str]:
    out = {nid for nid, s in reg.sessions.items() if s.wake.is_set()}
    for s in reg.sessions.values():
        s.wake.clear()
    return out


def test_only_streams_whose_desired_set_changed_wake() -> None:
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.add_node(n)
    reg = _registry(h)
    for n in ("n1", "n2", "n3"):
        reg.open(n)
    assert _woken(reg) == {"n1", "n2", "n3"}  # a new stream sends its set at once
    reg._flush()  # first flush after start: the changes are unknown, every stale stream checks
    for s in reg.sessions.values():
        s.sent_version, s.sent_tasks = h.state.desired_version(s.node_id), b""
    _woken(reg)

    h.submit("j1", count=2, batch=True)
    reg._flush()
    assert _woken(reg) == set()  # nothing placed yet: no node's set changed
    h.place({"j1.0": "n1", "j1.1": "n3"})
    reg._flush()
    assert _woken(reg) == {"n1", "n3"}
    h.report("j1.0", types_pb2.TASK_STATE_RUNNING)  # same (task, attempt): the set is unchanged
    reg._flush()
    assert _woken(reg) == set()
    h.report("j1.1", types_pb2.TASK_STATE_SUCCEEDED)  # batch task done: it leaves n3's set
    reg._flush()
    assert _woken(reg) == {"n3"}


def test_after_a_restore_every_stream_with_a_stale_set_wakes() -> None:
    h = Harness()
    for n in ("n1", "n2"):
        h.add_node(n)
    reg = _registry(h)
    for n in ("n1", "n2"):
        reg.open(n)
    for s in reg.sessions.values():
        s.sent_version, s.sent_tasks = h.state.desired_version(s.node_id), b""
    h.submit("j1", count=1)
    h.place({"j1.0": "n2"})
    h.state.take_desired_changes()  # as if a flush had run on another replica's behalf
    _woken(reg)
    h.state.restore(h.state.snapshot())  # e.g. a snapshot installed from the leader
    reg._flush()
    assert _woken(reg) == {"n2"}  # n1's set never changed: its sent version is still current
