"""The machine's GPUs: probed through NVML, or simulated from a --simulate-gpus inventory."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import asdict, dataclass

from protocol.gpus import mb_from_gb
from protocol.messages import GpuReport
from worker.errors import WorkerError


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_free_mb: int
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None

    def as_report(self) -> GpuReport:
        return GpuReport(**asdict(self))


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    simulated: bool = False
    # Why there are no GPUs, when there are none.
    message: str | None = None


_SPEC = re.compile(r"^\s*(?P<name>[^:]+?)\s*:\s*(?P<vram>\d+(?:\.\d+)?)\s*(?:x\s*(?P<count>\d+))?\s*$")


def parse_simulated(spec: str) -> tuple[tuple[str, float, int], ...]:
    """Read `MODEL:VRAM_GB[xCOUNT],...` into (model, GB, count) triples.

    Raises:
        WorkerError: the spec does not follow that form.
    """
    items = []
    for part in spec.split(","):
        if not part.strip():
            continue
        match = _SPEC.match(part)
        if not match:
            raise WorkerError(
                f"--simulate-gpus: {part.strip()!r} is not MODEL:VRAM_GB[xCOUNT], "
                'e.g. "NVIDIA GeForce RTX 4090:24x2".'
            )
        count = int(match["count"] or 1)
        if count < 1:
            raise WorkerError(f"--simulate-gpus: {part.strip()!r} asks for no GPUs; write MODEL:VRAM_GB[xCOUNT] with COUNT 1 or more.")
        items.append((match["name"], float(match["vram"]), count))
    if not items:
        raise WorkerError("--simulate-gpus is empty; give at least one MODEL:VRAM_GB.")
    return tuple(items)


def simulated_inventory(spec: str, *, seed: str = "") -> Inventory:
    """A made-up inventory with stable UUIDs (derived from seed), marked as simulated."""
    gpus = []
    for name, vram_gb, count in parse_simulated(spec):
        for _ in range(count):
            index = len(gpus)
            uid = uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"peergrid-sim:{seed}:{index}:{name}")
            mb = mb_from_gb(vram_gb)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=f"GPU-SIM-{uid}",
                    name=name,
                    memory_total_mb=mb,
                    memory_free_mb=mb,
                    compute_capability=None,
                    driver_version="simulated",
                    cuda_version=None,
                    utilization_pct=0,
                    temperature_c=None,
                )
            )
    return Inventory(gpus=tuple(gpus), simulated=True)


def probe(nvml=None) -> Inventory:
    """Ask NVML for the machine's GPUs; a machine without the NVIDIA driver has none."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return Inventory(gpus=(), message="nvidia-ml-py is not installed, so GPUs cannot be probed.")
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return Inventory(gpus=(), message=f"No NVIDIA driver found ({e}); this node serves CPU markets only.")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda_raw = nvml.nvmlSystemGetCudaDriverVersion_v2()
        cuda = f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}"
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=int(memory.total // (1024 * 1024)),
                    memory_free_mb=int(memory.free // (1024 * 1024)),
                    compute_capability=f"{major}.{minor}",
                    driver_version=driver,
                    cuda_version=cuda,
                    utilization_pct=_optional(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                    temperature_c=_optional(
                        lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
                    ),
                )
            )
        return Inventory(gpus=tuple(gpus), message=None if gpus else "NVML reports no GPUs.")
    except Exception as e:
        return Inventory(gpus=(), message=f"NVML failed while probing GPUs: {e}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read):
    try:
        return read()
    except Exception:
        return None
