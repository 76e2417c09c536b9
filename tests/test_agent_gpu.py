"""GPU probe: the NVML mapping checked with an injected fake NVML module (no GPU here), and the no-GPU paths."""

from __future__ import annotations

import importlib.util
import logging
import types

import pytest

from agent.gpu import GpuProbe


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Just the pynvml calls the probe makes; old pynvml returned bytes for names, so this does too."""

    def __init__(self, gpus, fail_init: bool = False, fail_util_on: int | None = None):
        self.gpus = gpus
        self.fail_init = fail_init
        self.fail_util_on = fail_util_on
        self.shutdown = False

    def nvmlInit(self):  # noqa: N802
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return self.gpus[h]["name"].encode()

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return types.SimpleNamespace(total=self.gpus[h]["total"], used=self.gpus[h]["used"], free=0)

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        if h == self.fail_util_on:
            raise FakeNVMLError("GPU is lost")
        return types.SimpleNamespace(gpu=self.gpus[h]["util"], memory=0)

    def nvmlShutdown(self):  # noqa: N802
        self.shutdown = True


H100 = {"uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", "total": 80 * 2**30, "used": 2**30, "util": 37}


def test_maps_nvml_to_gpu_info():
    nvml = FakeNVML([H100, dict(H100, uuid="GPU-2", used=0, util=0)])
    probe = GpuProbe.open(nvml)
    assert probe.count() == 2
    assert probe.memory_per_gpu() == 80 * 2**30
    static = probe.static()
    assert [(g.index, g.uuid, g.model) for g in static] == [
        (0, "GPU-1", H100["name"]),
        (1, "GPU-2", H100["name"]),
    ]
    live = probe.sample()
    assert live[0].memory_used_bytes == 2**30 and live[0].utilization_percent == 37.0
    assert live[1].memory_used_bytes == 0
    probe.close()
    assert nvml.shutdown


def test_a_gpu_that_stops_answering_keeps_reporting_the_rest():
    probe = GpuProbe.open(FakeNVML([H100, H100], fail_util_on=1))
    live = probe.sample()
    assert live[0].utilization_percent == 37.0
    assert live[1].model == H100["name"]


def test_no_driver_means_no_gpus(caplog):
    caplog.set_level(logging.INFO)
    probe = GpuProbe.open(FakeNVML([H100], fail_init=True))
    assert probe.count() == 0 and probe.sample() == [] and probe.static() == []
    assert "running without GPUs" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="nvidia-ml-py is installed here")
def test_no_library_means_no_gpus(caplog):
    caplog.set_level(logging.INFO)
    probe = GpuProbe.open()
    assert probe.count() == 0
    assert "nvidia-ml-py" in caplog.text
