"""Why a task cannot be placed: the constant phrases and how they are aggregated.

Each node that rejects a task is counted under the first filter it fails, in
filter order (down, cordoned, avoided, constraints, GPU model, distinct nodes,
resources); a node that passes every other filter but lacks room is counted
once per insufficient dimension, like Kubernetes' "Insufficient cpu" statuses.
The text lists resource shortages first because they are what an operator can
act on most directly; the order is fixed so that tests and scripts can match it.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.placement.model import DIMENSIONS, Constraint

# Count keys. Resource keys render as "insufficient cpu on 2 nodes"; the others as "cordoned: 1".
DOWN = "down"
CORDONED = "cordoned"
AVOIDED = "avoided"
DISTINCT = "distinct nodes"
NO_NODES = "no nodes"
INSUFFICIENT = tuple(f"insufficient {d}" for d in DIMENSIONS)


def constraint_key(c: Constraint) -> str:
    """'constraint zone=a', 'constraint zone in a,b', 'constraint gpu exists'."""
    if c.op in ("=", "!="):
        value = c.values[0] if c.values else ""
        return f"constraint {c.key}{c.op}{value}"
    if c.op in ("in", "not_in"):
        return f"constraint {c.key} {c.op} {','.join(c.values)}"
    return f"constraint {c.key} {c.op}"


def gpu_model_key(model: str) -> str:
    return f"gpu model {model}"


def _rank(key: str) -> tuple[int, str]:
    # Fixed order: resources, then node state, then the task's own filters.
    if key in INSUFFICIENT:
        return (INSUFFICIENT.index(key), "")
    fixed = {CORDONED: 10, DOWN: 11, AVOIDED: 12}
    if key in fixed:
        return (fixed[key], "")
    if key.startswith("constraint "):
        return (20, "")  # constraints keep the task's own order (dicts keep insertion order)
    if key.startswith("gpu model "):
        return (30, "")
    return (40, key)


def format_reason(counts: Mapping[str, int]) -> str:
    """Render counts as '; '-joined phrases in the fixed order; zero counts are dropped."""
    if not counts:
        return NO_NODES
    items = [(k, n) for k, n in counts.items() if n > 0]
    items.sort(key=lambda kv: _rank(kv[0]))  # stable: constraints keep their order
    parts = []
    for key, n in items:
        if key in INSUFFICIENT:
            parts.append(f"{key} on {n} node{'s' if n != 1 else ''}")
        else:
            parts.append(f"{key}: {n}")
    return "; ".join(parts) if parts else NO_NODES
