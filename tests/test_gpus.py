"""The GPU probe against a fake NVML (the library edge), and simulated inventories."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker.errors import WorkerError
from worker.gpus import parse_simulated, probe, simulated_inventory


class FakeNvml:
    """NVML as pynvml exposes it, for a machine with the GPUs given."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus, *, fail_init: Exception | None = None):
        self.gpus = gpus
        self.fail_init = fail_init
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise self.fail_init

    def nvmlShutdown(self):
        self.shut = True

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["total_gb"] * 1024**3, free=h["free_gb"] * 1024**3)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return h["cc"]

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetUtilizationRates(self, h):
        if h.get("no_util"):
            raise RuntimeError("Not Supported")
        return SimpleNamespace(gpu=h["util"])

    def nvmlDeviceGetTemperature(self, h, sensor):
        return h["temp"]


A100 = {"uuid": "GPU-aaaa", "name": "NVIDIA A100-SXM4-80GB", "total_gb": 80, "free_gb": 79, "cc": (8, 0), "util": 12, "temp": 41}
RTX = {"uuid": "GPU-bbbb", "name": b"NVIDIA GeForce RTX 4090", "total_gb": 24, "free_gb": 20, "cc": (8, 9), "util": 0,
       "temp": 35, "no_util": True}


def test_probe_reads_every_field_of_every_gpu():
    nvml = FakeNvml([A100, RTX])
    inventory = probe(nvml)

    assert not inventory.simulated and inventory.message is None
    a100, rtx = inventory.gpus
    assert (a100.index, a100.uuid, a100.name) == (0, "GPU-aaaa", "NVIDIA A100-SXM4-80GB")
    assert (a100.memory_total_mb, a100.memory_free_mb) == (80 * 1024, 79 * 1024)
    assert (a100.compute_capability, a100.driver_version, a100.cuda_version) == ("8.0", "550.54.15", "12.4")
    assert (a100.utilization_pct, a100.temperature_c) == (12, 41)
    assert rtx.name == "NVIDIA GeForce RTX 4090"  # bytes from older bindings are decoded
    assert rtx.utilization_pct is None  # a reading the card does not support is left out, not fatal
    assert nvml.shut


def test_no_driver_means_a_cpu_only_node_that_says_why():
    class LibraryNotFound(Exception):
        def __str__(self):
            return "NVML Shared Library Not Found"

    inventory = probe(FakeNvml([], fail_init=LibraryNotFound()))
    assert inventory.gpus == ()
    assert "No NVIDIA driver found (NVML Shared Library Not Found)" in inventory.message
    assert "CPU markets only" in inventory.message


def test_this_machine_without_nvidia_is_cpu_only():
    inventory = probe()
    assert inventory.gpus == () and inventory.message


def test_simulated_inventories_have_the_real_shape_and_stable_ids():
    inventory = simulated_inventory("NVIDIA A100-SXM4-80GB:80x2,NVIDIA GeForce RTX 4090:24", seed="n1")
    again = simulated_inventory("NVIDIA A100-SXM4-80GB:80x2,NVIDIA GeForce RTX 4090:24", seed="n1")
    other = simulated_inventory("NVIDIA A100-SXM4-80GB:80x2,NVIDIA GeForce RTX 4090:24", seed="n2")

    assert inventory.simulated
    assert [(g.index, g.name, g.memory_total_mb) for g in inventory.gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", 80000), (1, "NVIDIA A100-SXM4-80GB", 80000), (2, "NVIDIA GeForce RTX 4090", 24000)]
    assert [g.uuid for g in inventory.gpus] == [g.uuid for g in again.gpus]
    assert not {g.uuid for g in inventory.gpus} & {g.uuid for g in other.gpus}
    assert set(inventory.gpus[0].as_report().to_wire()) >= {"uuid", "name", "memory_total_mb", "utilization_pct", "temperature_c"}


@pytest.mark.parametrize("spec", ["", "A100", "A100:lots", "A100:80x0", "A100:80xtwo"])
def test_a_bad_simulate_spec_says_what_form_it_takes(spec):
    with pytest.raises(WorkerError, match="MODEL:VRAM_GB"):
        parse_simulated(spec)
