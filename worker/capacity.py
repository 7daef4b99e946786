"""Which markets a node can serve with what is free now, and which GPUs an op gets."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from worker.gpus import Gpu


def version_tuple(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    parts = []
    for piece in str(value).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def gpu_fits(gpu: Gpu, market: dict, *, simulated: bool = False) -> bool:
    """Whether one GPU meets a market's per-GPU requirements."""
    if gpu.memory_total_mb < market.get("min_vram_mb", 0):
        return False
    models = market.get("gpu_models") or []
    if models and gpu.name not in models:
        return False
    if simulated:
        # A simulated GPU has no compute capability or CUDA version to compare.
        return True
    if market.get("min_compute_capability") and version_tuple(gpu.compute_capability) < version_tuple(
        market["min_compute_capability"]
    ):
        return False
    if market.get("min_cuda_version") and version_tuple(gpu.cuda_version) < version_tuple(market["min_cuda_version"]):
        return False
    return True


def pick_gpus(free: list[Gpu], market: dict, *, simulated: bool = False) -> list[Gpu] | None:
    """The GPUs an op of market gets from the free ones, or None when they are not enough.

    Takes the smallest fitting GPUs first, so bigger cards stay free for ops that need them.
    """
    need = market.get("gpu_count", 0)
    if need == 0:
        return []
    fitting = sorted((g for g in free if gpu_fits(g, market, simulated=simulated)), key=lambda g: (g.memory_total_mb, g.index))
    return fitting[:need] if len(fitting) >= need else None


@dataclass
class Capacity:
    """What a node holds: CPU slots and GPUs, taken by attempts and given back when they end."""

    gpus: tuple[Gpu, ...]
    slots: int
    simulated: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: set[int] = set()
        self._gpu_holders: dict[str, int] = {}

    def free_gpus(self) -> list[Gpu]:
        with self._lock:
            return [g for g in self.gpus if g.uuid not in self._gpu_holders]

    def can_serve(self, market: dict) -> bool:
        if market.get("gpu_count", 0) == 0:
            with self._lock:
                return len(self._cpu) < self.slots
        return pick_gpus(self.free_gpus(), market, simulated=self.simulated) is not None

    def reserve(self, attempt_id: int, market: dict) -> list[Gpu] | None:
        """Hold what an op of market needs for attempt_id; None when it is not free."""
        with self._lock:
            if market.get("gpu_count", 0) == 0:
                if len(self._cpu) >= self.slots:
                    return None
                self._cpu.add(attempt_id)
                return []
            free = [g for g in self.gpus if g.uuid not in self._gpu_holders]
            picked = pick_gpus(free, market, simulated=self.simulated)
            if picked is None:
                return None
            for gpu in picked:
                self._gpu_holders[gpu.uuid] = attempt_id
            return picked

    def release(self, attempt_id: int) -> None:
        with self._lock:
            self._cpu.discard(attempt_id)
            for uuid in [u for u, holder in self._gpu_holders.items() if holder == attempt_id]:
                del self._gpu_holders[uuid]

    def holders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._gpu_holders)
