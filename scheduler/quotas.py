"""Admins' quotas: per person, on every market or on one, the most GPUs held at once and the most jobs waiting.

A submit over the waiting quota is refused before any credit moves (check_waiting_quota); the
running quota is the placement pass's to keep (running_gpu_limits). Submits of one person are
serialised while their waiting jobs are counted, so two at once cannot both take the last place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, distinct, func, or_, select, update
from sqlalchemy.orm import Session

from scheduler.errors import NotFound, PeergridError, QuotaExceeded
from scheduler.models import Job, Market, Op, Quota, User
from scheduler.states import JobState, utcnow

# The largest limit a quota may hold: far past any cluster, within any store's integer.
MAX_LIMIT = 1_000_000


@dataclass(frozen=True)
class QuotaView:
    """One quota as an admin reads it: whose, on which market (None: every market), and its limits."""

    user_id: int
    email: str
    market: str | None
    max_running_gpus: int | None
    max_waiting_jobs: int | None
    updated_at: datetime


def _limit(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise PeergridError(f"{name} must be a whole number from 0 to {MAX_LIMIT}, or none for no limit.")
    return value


def market_named(session: Session, slug: str | None) -> Market | None:
    """The market of a slug; None for none (every market).

    Raises:
        NotFound: no market has that slug.
    """
    if slug is None:
        return None
    market = session.scalar(select(Market).where(Market.slug == slug))
    if market is None:
        slugs = ", ".join(session.scalars(select(Market.slug).order_by(Market.slug)))
        raise NotFound(f"There is no market {slug!r}; the markets are {slugs or 'none yet'}.")
    return market


def quota_of(session: Session, user: User, market: Market | None) -> Quota | None:
    """user's quota on market (on every market, for None), if an admin set one."""
    where = Quota.market_id.is_(None) if market is None else Quota.market_id == market.id
    return session.scalar(select(Quota).where(Quota.user_id == user.id, where))


def set_quota(
    session: Session, user: User, market: Market | None, *, max_running_gpus: int | None,
    max_waiting_jobs: int | None, now: datetime | None = None,
) -> Quota | None:
    """Set user's quota on market (None: on every market) to these limits; None in a limit lifts it,
    and with both lifted the quota is gone.

    Returns:
        The quota, or None when both limits are lifted.
    Raises:
        PeergridError: a limit is not a whole number from 0 to MAX_LIMIT.
    """
    running = _limit(max_running_gpus, "max_running_gpus")
    waiting = _limit(max_waiting_jobs, "max_waiting_jobs")
    # The unique index does not hold for market_id NULL (NULLs differ): one change per person at a time.
    hold_submits(session, user)
    quota = quota_of(session, user, market)
    if running is None and waiting is None:
        if quota is not None:
            session.delete(quota)
            session.flush()
        return None
    if quota is None:
        quota = Quota(user_id=user.id, market_id=market.id if market else None)
        session.add(quota)
    quota.max_running_gpus, quota.max_waiting_jobs, quota.updated_at = running, waiting, now or utcnow()
    session.flush()
    return quota


def clear_quota(session: Session, user: User, market: Market | None) -> bool:
    """Remove user's quota on market (on every market, for None); whether there was one."""
    where = Quota.market_id.is_(None) if market is None else Quota.market_id == market.id
    return bool(session.execute(delete(Quota).where(Quota.user_id == user.id, where)).rowcount)


def list_quotas(session: Session, user: User | None = None) -> list[QuotaView]:
    """Every quota (or user's), by person, the every-market one first."""
    query = (
        select(Quota, User.email, Market.slug)
        .join(User, User.id == Quota.user_id)
        .outerjoin(Market, Market.id == Quota.market_id)
        .order_by(User.email, Quota.market_id.is_not(None), Market.slug)
    )
    if user is not None:
        query = query.where(Quota.user_id == user.id)
    return [
        QuotaView(q.user_id, email, slug, q.max_running_gpus, q.max_waiting_jobs, q.updated_at)
        for q, email, slug in session.execute(query)
    ]


def running_gpu_limits(session: Session) -> dict[tuple[int, int | None], int]:
    """(user id, market id or None for every market) -> the most GPUs that person's ops may hold at once."""
    rows = session.execute(
        select(Quota.user_id, Quota.market_id, Quota.max_running_gpus).where(Quota.max_running_gpus.is_not(None))
    )
    return {(user_id, market_id): limit for user_id, market_id, limit in rows}


def hold_submits(session: Session, user: User) -> None:
    """Make other transactions that hold user's submits wait until this one ends.

    PostgreSQL locks the user's row (FOR NO KEY UPDATE, which rows referring to the user do not
    wait on). SQLite takes its one write lock now, with a write that changes nothing: its
    transactions begin at their first write, so one that only read before writing could have
    counted what another was adding.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(User).where(User.id == user.id).values(max_priority=User.max_priority)
            .execution_options(synchronize_session=False)
        )
    else:
        session.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))


def waiting_jobs(session: Session, user: User, market_id: int | None) -> int:
    """How many of user's jobs wait (queued) with an op on the market; on any, for None."""
    where = [Job.owner_id == user.id, Job.state == JobState.QUEUED]
    if market_id is None:
        return session.scalar(select(func.count(Job.id)).where(*where)) or 0
    return session.scalar(
        select(func.count(distinct(Job.id))).join(Op, Op.job_id == Job.id).where(*where, Op.market_id == market_id)
    ) or 0


def waiting_quota_problem(
    session: Session, user: User, markets: Iterable[Market], *, adding: int = 1
) -> QuotaExceeded | None:
    """What refuses adding more waiting jobs of user with ops on markets, if a quota does; None when all fit."""
    by_id = {m.id: m for m in markets}
    quotas = list(session.scalars(
        select(Quota).where(
            Quota.user_id == user.id, Quota.max_waiting_jobs.is_not(None),
            or_(Quota.market_id.is_(None), Quota.market_id.in_(list(by_id))),
        ).order_by(Quota.market_id.is_not(None), Quota.market_id)
    ))
    for quota in quotas:
        limit = int(quota.max_waiting_jobs or 0)  # never None: selected for it
        waiting = waiting_jobs(session, user, quota.market_id)
        if waiting + adding <= limit:
            continue
        market = by_id[quota.market_id].slug if quota.market_id is not None else None
        where = f"on market {market}" if market else "across all markets"
        more = "" if adding == 1 else f", so {adding} more cannot be added"
        return QuotaExceeded(
            f"Your quota allows {limit} waiting job{'s' if limit != 1 else ''} {where} and {waiting} "
            f"wait{'s' if waiting == 1 else ''} now{more}; wait for some to start or ask an admin.",
            market=market, max_waiting_jobs=limit, waiting=waiting, adding=adding,
        )
    return None


def check_waiting_quota(session: Session, owner: User, markets: Iterable[Market], *, adding: int = 1) -> None:
    """Refuse adding `adding` waiting jobs of owner with ops on markets when a quota of owner's would
    be exceeded; call it before the submit writes anything. With a quota to keep, owner's other
    submits wait until this transaction ends, so the count stays true until the jobs are in.

    Raises:
        QuotaExceeded: saying which quota, how many wait, and what to do.
    """
    markets = list(markets)
    if not _has_waiting_quota(session, owner, markets):
        return
    hold_submits(session, owner)
    problem = waiting_quota_problem(session, owner, markets, adding=adding)
    if problem is not None:
        raise problem


def _has_waiting_quota(session: Session, owner: User, markets: list[Market]) -> bool:
    return session.scalar(
        select(Quota.id).where(
            Quota.user_id == owner.id, Quota.max_waiting_jobs.is_not(None),
            or_(Quota.market_id.is_(None), Quota.market_id.in_([m.id for m in markets])),
        ).limit(1)
    ) is not None

