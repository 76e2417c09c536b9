"""The level-triggered diff between the controller's desired task set and what the agent has.

Pure: no I/O, no clock. Tasks are keyed by (task_id, attempt), so an older
attempt of a desired task is "not desired" and gets stopped while the new
attempt starts. A task that already finished (succeeded, failed, stopped) is
not started again for the same attempt: restarts are the controller's
decision, signalled by a new attempt. Applying the same set twice yields an
empty plan (idempotent); stopping a task already being stopped is a no-op
in the runner, so the plan lists every running task that is not desired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, int]


@dataclass(frozen=True)
class Have:
    """What the reconciler needs to know about a task the agent has a record of."""

    running: bool


@dataclass(frozen=True)
class Plan:
    start: list[Key] = field(default_factory=list)  # in the desired set's order
    stop: list[Key] = field(default_factory=list)  # running, not desired
    forget: list[Key] = field(default_factory=list)  # finished, not desired: drop the record

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.forget)


def accept_version(last_applied: int, incoming: int) -> bool:
    """Older sets are stale (e.g. from a deposed leader) and ignored; equal ones re-apply harmlessly."""
    return incoming >= last_applied


def diff(desired: Iterable[Key], have: Mapping[Key, Have]) -> Plan:
    desired_keys = list(dict.fromkeys(desired))  # de-duplicated, order kept
    wanted = set(desired_keys)
    start = [k for k in desired_keys if k not in have]
    stop = sorted(k for k, h in have.items() if k not in wanted and h.running)
    forget = sorted(k for k, h in have.items() if k not in wanted and not h.running)
    return Plan(start, stop, forget)
