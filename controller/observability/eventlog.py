"""Writes each replicated cluster event as one structured log line on the leader.

The replicated event log (controller/state/events.py: node joined/suspect/
down, task placed/started/exited/lost/migrated, preemptions, leader changes,
...) is what `lepton-ctl events --follow` streams. Operators who ship logs
rather than watch the API want the same events in the controller's log, one
line each, with the node, job and task ids and the term as fields (JSON with
--log-format json). Only the leader writes them, so a three-replica cluster
logs each event once, not three times; after a failover the new leader
starts from the events it applies from then on.

Logger: `lepton.events`; the event type is the `event` field, its sequence
number `seq`.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("lepton.events")

# At most this many events are logged per wake-up; a bigger burst (a huge
# placement round) is summarised instead of writing tens of thousands of lines.
MAX_LINES_PER_BATCH = 2000


async def run(replica) -> None:
    """Forever: wait for applied commands, log the new events if this replica leads."""
    state, sessions = replica.state, replica.sessions
    seq = state.last_event_seq
    while True:
        await sessions.changed.wait()  # replaced after each broadcast: read it anew every time
        last = state.last_event_seq
        if last <= seq:
            continue
        if not replica.is_leader or not log.isEnabledFor(logging.INFO):
            seq = last  # (--log-level WARNING: not even the copies are made)
            continue
        new = state.events(since_seq=seq, limit=MAX_LINES_PER_BATCH)
        skipped = (last - seq) - len(new)
        if skipped > 0:
            log.info("%d events not logged (burst); see lepton-ctl events", skipped)
        for ev in new:
            extra = {"event": ev.type, "seq": ev.seq, "term": ev.term}
            for k in ("node_id", "job_id", "task_id"):
                v = getattr(ev, k)
                if v:
                    extra[k] = v
            log.info("%s: %s", ev.type, ev.message, extra=extra)
        seq = last
        await asyncio.sleep(0)  # let the writers of this batch run before the next
