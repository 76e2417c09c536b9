"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported as pynvml), behind a small probe.

`GpuProbe.open()` returns a probe that lists GPUs with model, memory and
utilisation, or an empty probe when the library, the driver or any GPU is
missing; that is logged once and is not an error. The NVML module is
injectable so tests (and machines without a GPU) can check the mapping with a
fake.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton.v1 import types_pb2

log = logging.getLogger("lepton.agent.gpu")


def _text(value: Any) -> str:
    # Old pynvml versions return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuProbe:
    def __init__(self, nvml: Any = None, handles: list[Any] | None = None) -> None:
        self._nvml = nvml
        self._handles = handles or []
        self._static: list[types_pb2.GpuInfo] = []
        for i, h in enumerate(self._handles):
            self._static.append(
                types_pb2.GpuInfo(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                    model=_text(nvml.nvmlDeviceGetName(h)),
                    memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                )
            )

    @classmethod
    def open(cls, nvml: Any = None) -> GpuProbe:
        """A probe over every GPU NVML sees; an empty one (logged once) when there is none."""
        if nvml is None:
            try:
                import pynvml as nvml  # type: ignore[import-not-found]
            except ImportError:
                log.info("no GPU support: nvidia-ml-py (pynvml) is not installed; running without GPUs")
                return cls()
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            probe = cls(nvml, handles)
        except Exception as e:  # NVMLError has many subclasses (no driver, no GPU...)
            log.info("no GPUs: NVML unavailable (%s); running without GPUs", e)
            return cls()
        if count == 0:
            log.info("no GPUs: NVML found no devices")
        else:
            log.info("found %d GPU(s): %s", count, ", ".join(g.model for g in probe.static()))
        return probe

    def static(self) -> list[types_pb2.GpuInfo]:
        """Fingerprint: index, uuid, model, memory total (for Hello)."""
        out = []
        for g in self._static:
            copy = types_pb2.GpuInfo()
            copy.CopyFrom(g)
            out.append(copy)
        return out

    def count(self) -> int:
        return len(self._handles)

    def memory_per_gpu(self) -> int:
        return min((g.memory_total_bytes for g in self._static), default=0)

    def sample(self) -> list[types_pb2.GpuInfo]:
        """Live memory used and utilisation; a GPU that fails to answer keeps its static fields."""
        out = []
        for g, h in zip(self._static, self._handles, strict=True):
            live = types_pb2.GpuInfo()
            live.CopyFrom(g)
            try:
                live.memory_used_bytes = int(self._nvml.nvmlDeviceGetMemoryInfo(h).used)
                live.utilization_percent = float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception as e:  # a GPU falling off the bus must not stop reporting
                log.debug("GPU %d did not answer: %s", g.index, e)
            out.append(live)
        return out

    def close(self) -> None:
        if self._nvml is not None and self._handles:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
