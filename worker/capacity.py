"""What a node holds: CPU slots and GPUs, taken by attempts and given back when they end.

Which GPUs serve a market is protocol.gpus's rule, the same one the server checks claims with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from protocol.gpus import MarketNeeds, pick_gpus
from worker.gpus import Gpu


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

    def release(self, attempt_id: int) -> None:
        with self._lock:
            self._cpu.discard(attempt_id)
            for uuid in [u for u, holder in self._gpu_holders.items() if holder == attempt_id]:
                del self._gpu_holders[uuid]

    def holders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._gpu_holders)
