"""Label selectors and GPU model matching, per node and as boolean masks over nodes.

The planner evaluates each distinct selector once per plan as a NumPy mask over
the (id-sorted) nodes and caches it, so a constraint costs nothing per task.
Semantics follow Kubernetes/Nomad: `!=` and `not_in` match a node without the
label; `=`/`in` need it. An unknown operator matches no node, so the task is
reported unplaced with that constraint as the reason instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from controller.placement.model import Constraint


def label_matches(labels: Mapping[str, str], c: Constraint) -> bool:
    value = labels.get(c.key)
    op = c.op
    if op == "=":
        return value is not None and bool(c.values) and value == c.values[0]
    if op == "!=":
        return value is None or not c.values or value != c.values[0]
    if op == "in":
        return value is not None and value in c.values
    if op == "not_in":
        return value is None or value not in c.values
    if op == "exists":
        return value is not None
    if op == "not_exists":
        return value is None
    return False


def gpu_model_matches(models: Sequence[str], wanted: str) -> bool:
    # Substring and case-insensitive: "h100" matches "NVIDIA H100 80GB HBM3".
    if not wanted:
        return True
    w = wanted.lower()
    return any(w in m.lower() for m in models)


class MaskCache:
    """Per-plan cache of constraint and GPU-model masks over the node list."""

    def __init__(self, labels: Sequence[Mapping[str, str]], gpu_models: Sequence[Sequence[str]]):
        self._labels = labels
        self._gpu_models = gpu_models
        self._constraint: dict[Constraint, np.ndarray] = {}
        self._gpu: dict[str, np.ndarray] = {}

    def constraint(self, c: Constraint) -> np.ndarray:
        mask = self._constraint.get(c)
        if mask is None:
            mask = np.fromiter(
                (label_matches(lb, c) for lb in self._labels), dtype=bool, count=len(self._labels)
            )
            self._constraint[c] = mask
        return mask

    def gpu_model(self, wanted: str) -> np.ndarray:
        mask = self._gpu.get(wanted)
        if mask is None:
            mask = np.fromiter(
                (gpu_model_matches(m, wanted) for m in self._gpu_models),
                dtype=bool,
                count=len(self._gpu_models),
            )
            self._gpu[wanted] = mask
        return mask
