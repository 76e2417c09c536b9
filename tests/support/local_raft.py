"""A single-replica, in-memory stand-in for controller.raft.node.RaftNode (tests only).

Same surface as the real driver (propose, read_index, leadership listeners,
id/term/role...), no disk and no network: a proposal is applied at once. Unit
tests of the servicers and loops use it so they do not depend on Raft timing.
`set_leader()` lets a test turn the replica into a follower of someone else
to check redirects. Never used by the product.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from lepton.errors import NotLeader, Unavailable


@dataclass
class LocalRaftConfig:
    id: str = "c1"
    peers: dict[str, str] = field(default_factory=dict)
    data_dir: Path | None = None
    listen: str = "127.0.0.1:0"


class LocalRaft:
    def __init__(self, cfg, state_machine) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.sm = state_machine
        self.term = 0
        self.commit_index = 0
        self.applied_index = 0
        self.is_leader = False
        self.leader_id = ""
        self._listeners = []
        self._running = False
        self.proposals: list[bytes] = []  # every committed proposal, for assertions

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "follower"

    def add_leadership_listener(self, cb) -> None:
        self._listeners.append(cb)

    async def start(self) -> None:
        self._running = True
        self.set_leader(True)

    async def stop(self) -> None:
        if self.is_leader:
            self.set_leader(False, "")
        self._running = False

    def set_leader(self, leader: bool, leader_id: str | None = None) -> None:
        """Test hook: become leader (new term) or a follower of `leader_id`."""
        self.term += 1
        was = self.is_leader
        self.is_leader = leader
        self.leader_id = self.id if leader else (leader_id or "")
        if was != leader or leader:
            for cb in list(self._listeners):
                cb(leader, self.term)

    async def propose(self, data: bytes, timeout: float = 5.0):  # noqa: ASYNC109
        if not self._running:
            raise Unavailable("replica is stopped")
        if not self.is_leader:
            raise NotLeader(leader_id=self.leader_id, term=self.term)
        await asyncio.sleep(0)  # proposals are asynchronous in the real driver too
        self.commit_index += 1
        self.applied_index = self.commit_index
        self.proposals.append(data)
        return self.sm.apply(self.commit_index, self.term, data)

    async def read_index(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        if not self.is_leader:
            raise NotLeader(leader_id=self.leader_id, term=self.term)

    def members(self) -> dict[str, str]:
        return dict(self.cfg.peers) or {self.id: self.cfg.listen}

    def peer_progress(self) -> dict[str, dict]:
        return {}
