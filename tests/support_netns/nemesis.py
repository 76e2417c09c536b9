"""The fault suite's nemesis: injects one fault at a time, heals it, pauses, repeats.

Faults (each healed before the next one starts):

- `kill_leader`: SIGKILL the leader controller's host, wait, start it again
  on the same data directory;
- `partition_minority`: cut one controller (chosen at random, leader or not)
  off from every other host, controllers and agents; heal;
- `partition_leader_agents`: cut the leader off from the agents' hosts only
  (it keeps its quorum, so it stays leader while no agent can reach it); heal;
- `kill_agent`: SIGKILL an agent *process* (its tasks live on, as after an
  agent crash), wait, start it again; it must re-adopt its tasks;
- `restart_all_controllers`: SIGKILL every controller, then start them all.

Every choice (which fault, which host, how long) comes from one
`random.Random(seed)`, so a seed replays the same schedule of faults (the
cluster's timing still differs run to run). The root namespace (where the
client and the checker run) is never cut off: partitions are DROP rules on
host addresses only.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from .lepton import LeptonOnNetns

FAULTS = (
    "kill_leader",
    "partition_minority",
    "partition_leader_agents",
    "kill_agent",
    "restart_all_controllers",
)


@dataclass
class Nemesis:
    lep: LeptonOnNetns
    seed: int
    fault_s: tuple[float, float] = (2.0, 8.0)  # how long a fault lasts (down_after is 4 s: both sides of it)
    pause_s: tuple[float, float] = (2.0, 5.0)  # quiet time after healing
    leader_wait_s: float = 15.0  # a fault that needs the leader is skipped when none shows up in time
    injected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._t0 = time.monotonic()

    def _say(self, msg: str) -> None:
        line = f"[nemesis +{time.monotonic() - self._t0:6.1f}s] {msg}"
        self.log.append(line)
        print(line, flush=True)

    def _leader(self) -> str | None:
        return self.lep.find_leader(timeout=self.leader_wait_s)

    def run(self, duration: float) -> None:
        """Injects faults until `duration` seconds have passed; always leaves the network healed."""
        end = time.monotonic() + duration
        try:
            while time.monotonic() < end:
                kind = self.rng.choice(FAULTS)
                hold = self.rng.uniform(*self.fault_s)
                getattr(self, kind)(hold)
                time.sleep(self.rng.uniform(*self.pause_s))
        finally:
            self.lep.net.heal()

    # ---------------------------------------------------------------- faults
    def kill_leader(self, hold: float) -> None:
        leader = self._leader()
        if leader is None:
            self.skipped["kill_leader"] += 1
            self._say("kill_leader: no leader agreed; skipped")
            return
        self._say(f"kill_leader: SIGKILL {leader}, restart in {hold:.1f}s")
        self.lep.net.kill(leader)
        self.injected["kill_leader"] += 1
        time.sleep(hold)
        self.lep.net.restart(leader)

    def partition_minority(self, hold: float) -> None:
        victim = self.rng.choice(self.lep.controllers)
        others = [h for h in self.lep.net.hosts if h != victim]
        self._say(f"partition_minority: {victim} cut off from {len(others)} hosts for {hold:.1f}s")
        self.lep.net.partition([victim], others)
        self.injected["partition_minority"] += 1
        time.sleep(hold)
        self.lep.net.heal()

    def partition_leader_agents(self, hold: float) -> None:
        leader = self._leader()
        if leader is None:
            self.skipped["partition_leader_agents"] += 1
            self._say("partition_leader_agents: no leader agreed; skipped")
            return
        self._say(f"partition_leader_agents: {leader} cut off from the agents for {hold:.1f}s")
        self.lep.net.partition([leader], self.lep.agents)
        self.injected["partition_leader_agents"] += 1
        time.sleep(hold)
        self.lep.net.heal()

    def kill_agent(self, hold: float) -> None:
        agent = self.rng.choice(self.lep.agents)
        self._say(f"kill_agent: SIGKILL agent process on {agent} (tasks live on), restart in {hold:.1f}s")
        self.lep.net.kill(agent, whole_host=False)
        self.injected["kill_agent"] += 1
        time.sleep(hold)
        self.lep.net.restart(agent, whole_host=False)

    def restart_all_controllers(self, hold: float) -> None:
        # `hold` unused on purpose: all replicas come back at once, the hard case for elections.
        del hold
        self._say("restart_all_controllers: SIGKILL all controllers, start all")
        for c in self.lep.controllers:
            self.lep.net.kill(c)
        for c in self.lep.controllers:
            self.lep.net.restart(c)
        self.injected["restart_all_controllers"] += 1
