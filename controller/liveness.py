"""Node liveness: which nodes became suspect, down or ready again (leader only).

`transitions()` is pure: given each node's status, when its agent was last
heard from (monotonic seconds, leader memory) and when this leadership began,
it returns the status changes to propose. The loop in leader.py feeds it and
proposes one SetNodeStatus per change.

After a failover the new leader has heard from nobody yet; every node's age
is therefore measured from the start of this leadership at the earliest, and
no node is declared down before `grace` has passed since then, so agents have
time to find the new leader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lepton.v1 import types_pb2

READY = types_pb2.NODE_STATUS_READY
SUSPECT = types_pb2.NODE_STATUS_SUSPECT
DOWN = types_pb2.NODE_STATUS_DOWN


def transitions(
    nodes: Iterable[tuple[str, int]],
    last_seen: Mapping[str, float],
    now: float,
    leader_since: float,
    suspect_after: float,
    down_after: float,
    grace: float,
) -> list[tuple[str, int, str]]:
    """Returns (node_id, new_status, reason) for each node whose status should change."""
    out: list[tuple[str, int, str]] = []
    in_grace = now - leader_since < grace
    for node_id, status in nodes:
        seen = max(last_seen.get(node_id, leader_since), leader_since)
        age = now - seen
        if age >= down_after and not in_grace:
            if status != DOWN:
                out.append((node_id, DOWN, f"no report for {age:.1f}s"))
        elif age >= suspect_after:
            if status == READY:
                out.append((node_id, SUSPECT, f"no report for {age:.1f}s"))
        elif status in (SUSPECT, DOWN) and node_id in last_seen and last_seen[node_id] >= leader_since:
            # Heard from it during this leadership: it is back.
            out.append((node_id, READY, "reporting again"))
    return out
