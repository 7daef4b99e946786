"""What a node holds: CPU slots and GPUs, taken by attempts and given back when they end.

Which GPUs serve a market is protocol.gpus's rule, the same one the server checks claims with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from protocol.gpus import MarketNeeds, pick_gpus
from worker.gpus import Gpu
from worker.runtime import Limits, Machine

# The least memory a container is given as its share, in MB; Docker refuses a limit below 6 MB.
MIN_SHARE_MB = 64


@dataclass
class Capacity:
    """The node's CPU slots and GPUs, and which attempt holds each."""

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

    def can_serve(self, market: MarketNeeds) -> bool:
        if market.gpu_count == 0:
            with self._lock:
                return len(self._cpu) < self.slots
        return pick_gpus(self.free_gpus(), market, simulated=self.simulated) is not None

    def reserve(self, attempt_id: int, market: MarketNeeds) -> list[Gpu] | None:
        """Hold what an op of market needs for attempt_id; None when it is not free."""
        with self._lock:
            if market.gpu_count == 0:
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

    def reserve_exact(self, attempt_id: int, uuids: tuple[str, ...] | list[str], market: MarketNeeds) -> list[Gpu] | None:
        """Hold the GPUs the scheduler placed attempt_id on (a CPU slot when it names none, for a CPU
        market); None when one of them is not this node's, is busy here, or the slots are full."""
        if not uuids:
            return self.reserve(attempt_id, market) if market.gpu_count == 0 else None
        with self._lock:
            own = {g.uuid: g for g in self.gpus}
            if any(u not in own or u in self._gpu_holders for u in uuids) or len(set(uuids)) != len(uuids):
                return None
            for uuid in uuids:
                self._gpu_holders[uuid] = attempt_id
            return [own[u] for u in uuids]

    def release(self, attempt_id: int) -> None:
        with self._lock:
            self._cpu.discard(attempt_id)
            for uuid in [u for u, holder in self._gpu_holders.items() if holder == attempt_id]:
                del self._gpu_holders[uuid]

    def holders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._gpu_holders)


def share_limits(
    machine: Machine, *, gpus: int, gpu_total: int, slots: int, memory_mb: int | None = None,
    cpus: float | None = None, pids: int = 4096,
) -> Limits:
    """What one op's container may use of the machine: its share, as the GPUs it holds are of the
    node's (g of G: g/G), or one CPU slot of slots; memory_mb and cpus, when the provider set them,
    instead."""
    fraction = gpus / gpu_total if gpus and gpu_total else 1 / max(1, slots)
    return Limits(
        pids=pids,
        memory_mb=memory_mb or max(MIN_SHARE_MB, int(machine.memory_mb * fraction)),
        cpus=cpus or max(0.01, machine.cpus * fraction),
    )
