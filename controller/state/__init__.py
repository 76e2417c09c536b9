"""Replicated cluster state of the Lepton controller (design brief § 4).

Public surface:
- `ClusterState`: the deterministic state machine Raft drives (apply,
  snapshot, restore, digest) and its read-only queries; see cluster.py.
- `command`, `encode`, `decode`, `raise_if_error`, `register_node_from_hello`:
  how proposers build and submit commands; see commands.py.
- `PlanResult`: what a committed CommitPlan did; see plan.py.
- `validate`: the input checks servicers run before proposing.
"""

from . import validate
from .cluster import ClusterState, LeaderInfo
from .commands import COMMAND_VERSION, command, decode, encode, raise_if_error, register_node_from_hello
from .events import MAX_EVENTS
from .plan import PlanResult
from .snapshot import SNAPSHOT_FORMAT_VERSION

__all__ = [
    "COMMAND_VERSION",
    "MAX_EVENTS",
    "SNAPSHOT_FORMAT_VERSION",
    "ClusterState",
    "LeaderInfo",
    "PlanResult",
    "command",
    "decode",
    "encode",
    "raise_if_error",
    "register_node_from_hello",
    "validate",
]
