"""A cluster on a simulated clock, placed by the real ranking and planner (scheduler.ordering,
scheduler.planner): ops are submitted, placed, run for their duration and end, one tick at a time.
For tests of order, fair share, reservations and backfill that would take minutes in real time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from scheduler.ordering import rank
from scheduler.planner import Limits, NodeRoom, Plan, Want, plan

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class SimOp:
    id: int
    owner: int
    gpus: int
    runs_s: float
    timeout_s: int
    priority: int = 0
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    node: int | None = None
    held: tuple[str, ...] = ()


@dataclass
class Cluster:
    """Nodes of GPUs (all qualifying for one market, id 1), and the ops submitted to it."""

    gpus_per_node: list[int]
    tick_s: float = 0.5
    now: float = 0.0
    ops: list[SimOp] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    # GPU-seconds used per owner, and per tick a snapshot of who holds how many GPUs.
    used: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def at(self, seconds: float) -> datetime:
        return EPOCH + timedelta(seconds=seconds)

    def submit(self, owner: int, *, gpus: int = 1, runs_s: float = 10, timeout_s: int = 10, priority: int = 0) -> SimOp:
        op = SimOp(len(self.ops) + 1, owner, gpus, runs_s, timeout_s, priority, submitted=self.now)
        self.ops.append(op)
        return op

    def rooms(self) -> list[NodeRoom]:
        rooms = []
        for index, count in enumerate(self.gpus_per_node):
            uuids = [f"GPU-{index}-{g}" for g in range(count)]
            busy = {}
            for op in self.running():
                if op.node == index:
                    for uuid in op.held:
                        busy[uuid] = self.at(op.started + op.timeout_s)
            rooms.append(NodeRoom(id=index, name=f"rig-{index}", gpu_vram=dict.fromkeys(uuids, 81920),
                                  qualifies={1: frozenset(uuids)}, busy_until=busy, markets=frozenset({1})))
        return rooms

    def running(self) -> list[SimOp]:
        return [op for op in self.ops if op.started is not None and op.ended is None]

    def waiting(self) -> list[SimOp]:
        return [op for op in self.ops if op.started is None]

    def step(self, limits: Limits | None = None) -> Plan:
        """End what has run its course, place what waits, then let a tick pass."""
        for op in self.running():
            if self.now >= op.started + op.runs_s:
                op.ended = op.started + op.runs_s
        wants = [
            Want(attempt_id=op.id, job_id=op.id, owner_id=op.owner, market_id=1, gpus=op.gpus,
                 timeout_s=op.timeout_s, priority=op.priority, created_at=self.at(op.submitted))
            for op in self.waiting()
        ]
        use = {}
        for op in self.ops:
            if op.started is not None:
                end = op.ended if op.ended is not None else self.now
                use[op.owner] = use.get(op.owner, 0.0) + (end - op.started) * op.gpus * 1000
        by_id = {op.id: op for op in self.ops}
        result = plan(rank(wants, use), self.rooms(), now=self.at(self.now), limits=limits, market_names={1: "gpu"})
        for placement in result.placements:
            op = by_id[placement.attempt_id]
            op.started, op.node, op.held = self.now, placement.node_id, placement.gpus
        self.plans.append(result)
        held: dict[int, int] = {}
        for op in self.running():
            held[op.owner] = held.get(op.owner, 0) + op.gpus
            self.used[op.owner] = self.used.get(op.owner, 0.0) + op.gpus * self.tick_s
        self.timeline.append((self.now, held))
        self.now += self.tick_s
        return result

    def run_until(self, condition, *, most_s: float = 10_000, each=None) -> None:
        while not condition():
            assert self.now < most_s, "the simulation ran out of time"
            if each is not None:
                each()
            self.step()
