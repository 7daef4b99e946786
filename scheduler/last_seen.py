"""What heartbeats said that only moves time forward, held in the web process and written in batches.

A heartbeat that changes nothing a decision reads (its node's state and hardware, its GPUs and their
memory) still says when the node was last heard and, on real GPUs, how warm and busy they are. Rather
than a write per heartbeat, each web process keeps the latest of these here, and its hearing thread
(scheduler.hearing.Ears) writes them every MARK_EVERY_S seconds in the transaction that marks the
process alive, stamped with the moment it took them. So, for each listener, every heartbeat noted
before its `alive_at` is in the store: the reaper measures silence up to the oldest fresh mark
(scheduler.hearing.hearing) and blames no node for what a buffer still holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, update

from scheduler.models import Node, NodeGpu
from scheduler.states import utcnow


@dataclass(frozen=True)
class Telemetry:
    """A GPU's readings that no decision reads: shown on pages and metrics only."""

    memory_free_mb: int
    utilization_pct: int | None
    temperature_c: int | None


@dataclass(frozen=True)
class Batch:
    """What a buffer held when taken, and the moment it was taken."""

    taken_at: datetime
    seen: dict[int, datetime]
    telemetry: dict[int, Telemetry]

    def __bool__(self) -> bool:
        return bool(self.seen or self.telemetry)


class SeenBuffer:
    """The latest heartbeat time of each node and the latest telemetry of each GPU, not yet written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, datetime] = {}
        self._telemetry: dict[int, Telemetry] = {}

    def note(self, node_id: int, readings: dict[int, Telemetry | None]) -> datetime:
        """Note that node_id was heard now, with its GPUs' readings (see note_readings).

        The time is read under the lock, so that a batch taken later holds it (see take)."""
        with self._lock:
            now = utcnow()
            self._seen[node_id] = now
            self._keep(readings)
            return now

    def note_readings(self, readings: dict[int, Telemetry | None]) -> None:
        """Hold the latest readings of GPUs by id; None for a GPU whose stored readings are current."""
        if readings:
            with self._lock:
                self._keep(readings)

    def _keep(self, readings: dict[int, Telemetry | None]) -> None:
        for gpu_id, reading in readings.items():
            if reading is None:
                self._telemetry.pop(gpu_id, None)
            else:
                self._telemetry[gpu_id] = reading

    def take(self) -> Batch:
        """Everything held, and the moment it was taken: every note before that moment is in it."""
        with self._lock:
            batch = Batch(utcnow(), self._seen, self._telemetry)
            self._seen, self._telemetry = {}, {}
        return batch

    def put_back(self, batch: Batch) -> None:
        """Return a batch that could not be written; what was noted since wins."""
        with self._lock:
            for node_id, when in batch.seen.items():
                if self._seen.get(node_id, when) <= when:
                    self._seen[node_id] = when
            for gpu_id, reading in batch.telemetry.items():
                self._telemetry.setdefault(gpu_id, reading)


def write_batch(conn: Connection, batch: Batch) -> None:
    """Write a batch in the caller's transaction: last-heard times only ever move forward.

    Rows go in id order, so two writers lock them in one order."""
    if batch.seen:
        conn.execute(
            update(Node)
            .where(Node.id == bindparam("node"))
            .where(Node.last_heartbeat_at.is_(None) | (Node.last_heartbeat_at < bindparam("seen")))
            .values(last_heartbeat_at=bindparam("seen")),
            [{"node": node_id, "seen": batch.seen[node_id]} for node_id in sorted(batch.seen)],
        )
    if batch.telemetry:
        conn.execute(
            update(NodeGpu)
            .where(NodeGpu.id == bindparam("gpu"))
            .values(
                memory_free_mb=bindparam("free"), utilization_pct=bindparam("util"), temperature_c=bindparam("temp")
            ),
            [
                {"gpu": gpu_id, "free": t.memory_free_mb, "util": t.utilization_pct, "temp": t.temperature_c}
                for gpu_id, t in sorted(batch.telemetry.items())
            ],
        )
