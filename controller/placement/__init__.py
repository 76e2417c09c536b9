"""Pure placement, preemption and rebalancing planners over an immutable cluster snapshot.

`place()` (planner.py) decides where pending tasks go; `plan_rebalance()`
(rebalance.py) decides which running tasks to move off hot nodes. Both are
deterministic functions of their inputs (no clock, randomness or I/O); the
controller's leader loops adapt ClusterState into `model` values, call them,
verify and commit the result through Raft. See docs/placement.md.
"""

from controller.placement.model import (
    DIMENSIONS,
    Assignment,
    ClusterView,
    Constraint,
    NodeInfo,
    PlacedTask,
    Plan,
    Policy,
    Preemption,
    Res,
    TaskRequest,
    Unplaced,
)
from controller.placement.planner import place
from controller.placement.rebalance import (
    MAKE_BEFORE_BREAK,
    STOP_THEN_START,
    Move,
    RebalanceConfig,
    RebalancePlan,
    plan_rebalance,
)

__all__ = [
    "DIMENSIONS",
    "Assignment",
    "ClusterView",
    "Constraint",
    "NodeInfo",
    "PlacedTask",
    "Plan",
    "Policy",
    "Preemption",
    "Res",
    "TaskRequest",
    "Unplaced",
    "place",
    "MAKE_BEFORE_BREAK",
    "STOP_THEN_START",
    "Move",
    "RebalanceConfig",
    "RebalancePlan",
    "plan_rebalance",
]
