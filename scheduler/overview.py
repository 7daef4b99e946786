"""The cluster at a glance: capacity online, queues, and how busy the GPUs have been."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from scheduler.models import Attempt, Market, Node, NodeGpu, Op
from scheduler.states import AttemptState, NodeState, utcnow

LIVE = (NodeState.ONLINE, NodeState.BUSY, NodeState.DRAINING)


@dataclass(frozen=True)
class Capacity:
    model: str
    gpus: int
    nodes: int
    simulated: bool


def capacity_online(session: Session) -> tuple[list[Capacity], int]:
    """GPUs on live nodes by model, and how many live nodes have none: counted by the store."""
    live = (Node.state.in_(LIVE), Node.removed_at.is_(None))
    rows = session.execute(
        select(NodeGpu.name, Node.simulated, func.count(NodeGpu.id), func.count(func.distinct(Node.id)))
        .join(Node, Node.id == NodeGpu.node_id)
        .where(*live)
        .group_by(NodeGpu.name, Node.simulated)
        .order_by(func.count(NodeGpu.id).desc(), NodeGpu.name)
    ).all()
    cpu_only = session.scalar(
        select(func.count(Node.id)).where(*live, ~select(NodeGpu.id).where(NodeGpu.node_id == Node.id).exists())
    ) or 0
    return [Capacity(model, gpus, nodes, simulated) for model, simulated, gpus, nodes in rows], cpu_only


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
    current = now or utcnow()
    end_of_window = current.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end_of_window - timedelta(hours=hours)
    total_gpus = session.scalar(
        select(func.count()).select_from(Node).join(Node.gpus).where(Node.removed_at.is_(None))
    ) or 0
    # An attempt holds its market's GPU count; reading that spares decoding each attempt's list. It
    # is looked up per attempt of the window, by primary key: a join let the planner scan every op
    # ever run (100,000 of them: 20 to 80 ms) to keep the few thousand of the last hours.
    gpus_held = (
        select(Market.gpu_count).join(Op, Op.market_id == Market.id).where(Op.id == Attempt.op_id).scalar_subquery()
    )
    attempts = session.execute(
        select(Attempt.started_at, Attempt.finished_at, gpus_held)
        .where(Attempt.started_at.is_not(None), gpus_held > 0)  # a CPU op's rows are not even read
        .where(or_(Attempt.finished_at.is_(None), Attempt.finished_at > start))
    ).all()
    used = [0.0] * hours
    # Each attempt adds its GPU-seconds to the hours it overlaps, and only to those.
    for began, ended, gpus in attempts:
        lo, hi = max(began, start), min(ended or current, end_of_window)
        if hi <= lo:
            continue
        first = int((lo - start).total_seconds() // 3600)
        last = min(hours - 1, int((hi - start).total_seconds() // 3600))
        for i in range(first, last + 1):
            bucket_lo = start + timedelta(hours=i)
            overlap = (min(hi, bucket_lo + timedelta(hours=1)) - max(lo, bucket_lo)).total_seconds()
            if overlap > 0:
                used[i] += overlap * gpus
    return [
        (start + timedelta(hours=i), min(1.0, used[i] / (3600 * total_gpus)) if total_gpus else 0.0)
        for i in range(hours)
    ]
