"""The node's capacity fingerprint and system reserve, as sent in Hello.

Detected: logical cores, physical memory, NIC speed (the fastest up,
non-loopback interface; virtual NICs report 0, so the configured default
speed stands in), GPU count and per-GPU memory. Every dimension can be
overridden by config (honest NIC speeds, demos that pretend a machine is
bigger); the reserve is what the OS keeps, so allocatable = capacity - reserve
(computed by the controller).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import AgentConfig
from lepton.v1 import types_pb2


@dataclass(frozen=True)
class Detected:
    cpus: int
    memory_bytes: int
    nic_speeds_mbps: Sequence[int]
    gpus: int
    gpu_memory_bytes: int


def network_capacity(speeds_mbps: Sequence[int], default_mbps: int) -> int:
    """Fastest real NIC; the default when every NIC reports 0 (virtual) or there is none."""
    real = [s for s in speeds_mbps if s > 0]
    return max(real) if real else default_mbps


def fingerprint(cfg: AgentConfig, found: Detected) -> tuple[types_pb2.Resources, types_pb2.Resources]:
    """(capacity, reserve) from what was detected and the config's overrides. Pure."""
    capacity = types_pb2.Resources(
        cpu_millis=cfg.cpus_millis if cfg.cpus_millis is not None else found.cpus * 1000,
        memory_bytes=cfg.memory_bytes if cfg.memory_bytes is not None else found.memory_bytes,
        network_mbps=(
            cfg.network_mbps
            if cfg.network_mbps is not None
            else network_capacity(found.nic_speeds_mbps, cfg.default_nic_mbps)
        ),
        gpus=cfg.gpus if cfg.gpus is not None else found.gpus,
        gpu_memory_bytes=found.gpu_memory_bytes if (cfg.gpus is None or cfg.gpus == found.gpus) else 0,
    )
    reserve = types_pb2.Resources(
        cpu_millis=cfg.reserve_cpus_millis,
        memory_bytes=cfg.reserve_memory_bytes,
        network_mbps=cfg.reserve_network_mbps,
    )
    return capacity, reserve


def detect(gpu_count: int = 0, gpu_memory_bytes: int = 0) -> Detected:
    from agent import sampler

    return Detected(
        cpus=sampler.cpu_count(),
        memory_bytes=sampler.physical_memory(),
        nic_speeds_mbps=list(sampler.nic_speeds_mbps()),
        gpus=gpu_count,
        gpu_memory_bytes=gpu_memory_bytes,
    )
