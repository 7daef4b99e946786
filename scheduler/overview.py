"""The cluster at a glance: capacity online, queues, and how busy the GPUs have been."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from scheduler.models import Attempt, Market, Node, Op
from scheduler.states import AttemptState, NodeState, utcnow

LIVE = (NodeState.ONLINE, NodeState.BUSY, NodeState.DRAINING)


@dataclass(frozen=True)
class Capacity:
    model: str
    gpus: int
    nodes: int
    simulated: bool


def capacity_online(session: Session) -> tuple[list[Capacity], int]:
    """GPUs on live nodes by model, and how many live nodes have none."""
    nodes = session.scalars(
        select(Node).options(selectinload(Node.gpus)).where(Node.state.in_(LIVE), Node.removed_at.is_(None))
    ).all()
    gpus: Counter = Counter()
    holders: dict[tuple[str, bool], set[int]] = {}
    cpu_only = 0
    for node in nodes:
        if not node.gpus:
            cpu_only += 1
        for gpu in node.gpus:
            key = (gpu.name, node.simulated)
            gpus[key] += 1
            holders.setdefault(key, set()).add(node.id)
    rows = [Capacity(model, count, len(holders[(model, sim)]), sim) for (model, sim), count in gpus.most_common()]
    return rows, cpu_only


def queue_depth(session: Session) -> list[tuple[Market, int, int]]:
    """Each market with its waiting and running attempts."""
    waiting = dict(
        session.execute(
            select(Op.market_id, func.count()).join(Attempt, Attempt.op_id == Op.id)
            .where(Attempt.state == AttemptState.QUEUED).group_by(Op.market_id)
        ).all()
    )
    running = dict(
        session.execute(
            select(Op.market_id, func.count()).join(Attempt, Attempt.op_id == Op.id)
            .where(Attempt.state.in_([AttemptState.CLAIMED, AttemptState.RUNNING])).group_by(Op.market_id)
        ).all()
    )
    markets = session.scalars(select(Market).order_by(Market.gpu_count, Market.price_per_second)).all()
    return [(m, waiting.get(m.id, 0), running.get(m.id, 0)) for m in markets]


def gpu_utilisation(session: Session, *, hours: int = 24, now: datetime | None = None) -> list[tuple[datetime, float]]:
    """For each of the last `hours` hours, the share of online GPU time that ran ops (0 to 1)."""
    now = (now or utcnow()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = now - timedelta(hours=hours)
    total_gpus = session.scalar(
        select(func.count()).select_from(Node).join(Node.gpus).where(Node.removed_at.is_(None))
    ) or 0
    attempts = session.execute(
        select(Attempt.started_at, Attempt.finished_at, Attempt.gpus)
        .where(Attempt.started_at.is_not(None))
        .where(or_(Attempt.finished_at.is_(None), Attempt.finished_at > start))
    ).all()
    buckets = []
    for i in range(hours):
        lo, hi = start + timedelta(hours=i), start + timedelta(hours=i + 1)
        used = 0.0
        for began, ended, gpus in attempts:
            if not gpus:
                continue
            overlap = (min(ended or utcnow(), hi) - max(began, lo)).total_seconds()
            if overlap > 0:
                used += overlap * len(gpus)
        buckets.append((lo, min(1.0, used / (3600 * total_gpus)) if total_gpus else 0.0))
    return buckets
