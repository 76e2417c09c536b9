"""Leader-only loops: started when this replica becomes leader, cancelled when it stops.

On gaining leadership (a term) the replica announces itself (LeaderChanged,
which also records its API address for redirects), then runs, in one
TaskGroup: liveness, the placement round (which also drives rescheduling
and drains) and, when configured, automatic rebalancing. Losing leadership
cancels the group and ends every agent stream so agents find the new leader.

Each loop survives its own errors (logged, retried after a pause); a
NotLeader from a proposal means leadership is being lost and the listener is
about to cancel us, so the loop just waits for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controller import liveness, rebalancing, scheduling
from lepton.errors import LeptonError, NotLeader
from lepton.v1 import commands_pb2

log = logging.getLogger("lepton.controller.leader")

# How often ages are checked: a quarter of suspect_after, at most 0.5 s (each
# check walks every node record, which adds up on large clusters).
LIVENESS_MAX_PERIOD = 0.5
ERROR_PAUSE = 0.5


class LeaderLoops:
    def __init__(self, replica) -> None:
        self.r = replica
        self._task: asyncio.Task | None = None
        self.term = 0
        self.leader_since = 0.0  # monotonic seconds
        self._stopped = False  # set by stop(): the process is shutting down

    def on_leadership(self, is_leader: bool, term: int) -> None:
        """Raft leadership listener (sync, on the event loop)."""
        if is_leader and not self._stopped:
            if self._task is not None and not self._task.done() and self.term == term:
                return
            self._cancel()
            self.term = term
            self.leader_since = self.r.clock.monotonic()
            log.info("%s is leader for term %d: starting leader loops", self.r.id, term)
            self._task = asyncio.get_running_loop().create_task(self._run(term), name=f"leader-term-{term}")
        else:
            if self._task is not None:
                log.info("%s lost leadership (term %d): stopping leader loops", self.r.id, term)
            self._cancel()
            self.r.sessions.close_all()

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self, term: int) -> None:
        try:
            await self._announce()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(guarded("liveness", self._liveness_loop))
                tg.create_task(guarded("placement", lambda: scheduling.placement_loop(self.r, term)))
                if self.r.cfg.rebalance_auto:
                    tg.create_task(guarded("rebalance", lambda: rebalancing.auto_loop(self.r, term)))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a loop must not take the process down
            log.exception("leader loops of term %d failed", term)

    async def _announce(self) -> None:
        """LeaderChanged (records our API address) then our own member record, retried until committed."""
        cfg = self.r.cfg
        while True:
            try:
                await self.r.propose(
                    commands_pb2.LeaderChanged(leader_id=self.r.id, api_address=cfg.api_address)
                )
                await self.r.propose(
                    commands_pb2.RegisterMember(
                        id=self.r.id, api_address=cfg.api_address, raft_address=cfg.raft_listen
                    )
                )
                return
            except NotLeader:
                await asyncio.Event().wait()  # the listener cancels us
            except LeptonError as e:
                log.warning("announcing leadership failed (%s); retrying", e)
                await asyncio.sleep(ERROR_PAUSE)

    async def _liveness_loop(self) -> None:
        cfg = self.r.cfg
        period = min(LIVENESS_MAX_PERIOD, cfg.suspect_after / 4)
        while True:
            await asyncio.sleep(period)
            now = self.r.clock.monotonic()
            live = self.r.sessions.live
            last_seen = {nid: lv.last_report_mono for nid, lv in live.items() if lv.last_report_mono}
            nodes = self.r.state.node_statuses()
            changes = liveness.transitions(
                nodes,
                last_seen,
                now,
                self.leader_since,
                cfg.suspect_after,
                cfg.down_after,
                cfg.grace_after_failover,
            )
            for node_id, status, reason in changes:
                await self.r.propose(
                    commands_pb2.SetNodeStatus(node_id=node_id, status=status, reason=reason)
                )
                self.r.sessions.capacity_changed.set()


async def guarded(name: str, make_loop) -> None:
    """Runs a loop forever, restarting it after an error (NotLeader: wait to be cancelled)."""
    while True:
        try:
            await make_loop()
            return
        except asyncio.CancelledError:
            raise
        except NotLeader:
            await asyncio.Event().wait()
        except LeptonError as e:
            log.warning("%s loop: %s; retrying", name, e)
        except Exception:
            log.exception("%s loop crashed; restarting", name)
        await asyncio.sleep(ERROR_PAUSE)
