"""What waits and what runs, as people read it: why an op waits, who is first in line, what each node runs.

It only reads what the placement pass (scheduler.placing) wrote on the attempts (waiting, placed_*,
reserved_*) and what runs; it decides nothing. Every query here reads queued or held attempts through
indexes, and the lists are cut short in the store, so a store of many finished jobs costs nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.models import Attempt, Job, Market, Node, Op, User
from scheduler.states import ATTEMPT_HELD, AttemptState

# How many of each market's waiting ops the overview lists.
FIRST_IN_LINE = 5
# How many reservations the overview lists.
RESERVATIONS_SHOWN = 20


@dataclass(frozen=True)
class NodeRef:
    id: int
    name: str


@dataclass(frozen=True)
class Waiting:
    """Why an op's last attempt waits, as the last pass found it, and where it was placed or reserved."""

    reason: str
    placed_on: NodeRef | None
    reserved_on: NodeRef | None
    reserved_from: datetime | None
    since: datetime


def attempt_waiting(session: Session, attempt: Attempt | None) -> Waiting | None:
    """How attempt waits, or None when it does not (it is not queued)."""
    if attempt is None or attempt.state != AttemptState.QUEUED:
        return None
    placed = _node_ref(session, attempt.placed_node_id)
    reserved = _node_ref(session, attempt.reserved_node_id)
    return Waiting(
        reason=attempt.waiting or _unexplained(placed.name if placed else None),
        placed_on=placed,
        reserved_on=reserved,
        reserved_from=attempt.reserved_from if reserved else None,
        since=attempt.created_at,
    )


def _unexplained(placed_on: str | None) -> str:
    # Between a submit and the pass after it, or placed by a pass that wrote no reason.
    if placed_on is not None:
        return f"placed on {placed_on}, waiting for it to start"
    return "waiting for the scheduler's next pass"


def _node_ref(session: Session, node_id: int | None) -> NodeRef | None:
    if node_id is None:
        return None
    node = session.get(Node, node_id)  # the identity map answers nodes already loaded
    return NodeRef(node.id, node.name) if node is not None else None


@dataclass(frozen=True)
class InLine:
    """One waiting op as the queue lists it."""

    position: int
    job_id: int
    op_key: str
    owner_id: int
    owner: str
    priority: int
    gpus: int
    reason: str
    since: datetime
    reserved_on: str | None
    reserved_from: datetime | None
    placed_on: str | None

    def reason_for(self, viewer_id: int) -> str:
        """The reason as someone other than the owner reads it: the pass writes reasons to the owner."""
        if viewer_id != self.owner_id and self.reason.startswith("your "):
            return "their " + self.reason.removeprefix("your ")
        return self.reason


def first_in_line(session: Session, *, first: int = FIRST_IN_LINE) -> dict[int, list[InLine]]:
    """The first `first` waiting ops of each market, by market id, in the order placement takes them.

    The order is the placement pass's: priority, then fair share (recent GPU time, less first), then age.
    One query ranks each market's waiting attempts in the store and keeps the first few.
    """
    ranked = (
        select(
            Attempt.id.label("attempt_id"),
            Op.market_id,
            func.row_number().over(partition_by=Op.market_id, order_by=_line_order()).label("position"),
        )
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .where(Attempt.state == AttemptState.QUEUED)
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.position, ranked.c.market_id, Attempt, Op.key, Job.id, Job.owner_id, Job.priority,
               User.email, Market.gpu_count)
        .join(Attempt, Attempt.id == ranked.c.attempt_id)
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .join(User, User.id == Job.owner_id)
        .join(Market, Market.id == Op.market_id)
        .where(ranked.c.position <= first)
        .order_by(ranked.c.market_id, ranked.c.position)
    ).all()
    names = _node_names(session, {n for r in rows for n in (r.Attempt.placed_node_id, r.Attempt.reserved_node_id)})
    lines: dict[int, list[InLine]] = {}
    for position, market_id, attempt, key, job_id, owner_id, priority, email, gpus in rows:
        placed = names.get(attempt.placed_node_id)
        lines.setdefault(market_id, []).append(InLine(
            position=position, job_id=job_id, op_key=key, owner_id=owner_id, owner=email, priority=priority,
            gpus=gpus, reason=attempt.waiting or _unexplained(placed),
            since=attempt.created_at, reserved_on=names.get(attempt.reserved_node_id),
            reserved_from=attempt.reserved_from if attempt.reserved_node_id else None, placed_on=placed,
        ))
    return lines


def _line_order() -> list:
    # The place in line the last placement pass stored (scheduler.ordering decides it); placed
    # attempts, which have none, are about to start and come first.
    return [func.coalesce(Attempt.line_position, 0), Attempt.id]


@dataclass(frozen=True)
class Reservation:
    """GPUs held on a node from a time for the first-ranked op that fits nowhere now."""

    node_id: int
    node: str
    start: datetime
    gpus: int
    job_id: int
    op_key: str
    owner_id: int


def reservations(session: Session, *, node_ids: Iterable[int] | None = None,
                 limit: int = RESERVATIONS_SHOWN) -> list[Reservation]:
    """Reservations held now, soonest first: on every node, or on those of node_ids."""
    query = (
        select(Attempt.reserved_node_id, Node.name, Attempt.reserved_from, Market.gpu_count, Job.id, Op.key,
               Job.owner_id)
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .join(Market, Market.id == Op.market_id)
        .join(Node, Node.id == Attempt.reserved_node_id)
        .where(Attempt.state == AttemptState.QUEUED, Attempt.reserved_node_id.is_not(None))
        .order_by(Attempt.reserved_from, Attempt.id)
        .limit(limit)
    )
    if node_ids is not None:
        query = query.where(Attempt.reserved_node_id.in_(list(node_ids)))
    return [Reservation(*row) for row in session.execute(query)]


@dataclass(frozen=True)
class Work:
    """An op a node holds now (claimed or running), or one placed there that it has yet to claim."""

    job_id: int
    op_key: str
    owner_id: int
    gpus: tuple[str, ...]
    since: datetime | None
    # When its time limit ends, counted from when it started (or was claimed); None until claimed.
    until: datetime | None
    starting: bool


def node_work(session: Session, node_ids: list[int]) -> dict[int, list[Work]]:
    """What each of node_ids runs now and what was placed on it to run next, by node id."""
    work: dict[int, list[Work]] = {}
    if not node_ids:
        return work
    held = session.execute(
        select(Attempt.node_id, Op.job_id, Op.key, Job.owner_id, Attempt.gpus, Attempt.started_at,
               Attempt.claimed_at, Op.timeout_s)
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .where(Attempt.node_id.in_(node_ids), Attempt.state.in_(ATTEMPT_HELD))
        .order_by(Attempt.node_id, Attempt.id)
    )
    for node_id, job_id, key, owner_id, gpus, started, claimed, timeout_s in held:
        since = started or claimed
        until = since + timedelta(seconds=timeout_s) if since else None
        work.setdefault(node_id, []).append(Work(job_id, key, owner_id, tuple(gpus or ()), since, until, False))
    placed = session.execute(
        select(Attempt.placed_node_id, Op.job_id, Op.key, Job.owner_id, Attempt.placed_gpus, Attempt.placed_at)
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .where(Attempt.placed_node_id.in_(node_ids), Attempt.state == AttemptState.QUEUED)
        .order_by(Attempt.placed_node_id, Attempt.id)
    )
    for node_id, job_id, key, owner_id, gpus, placed_at in placed:
        work.setdefault(node_id, []).append(Work(job_id, key, owner_id, tuple(gpus or ()), placed_at, None, True))
    return work


def _node_names(session: Session, ids: set[int | None]) -> dict[int, str]:
    ids.discard(None)
    if not ids:
        return {}
    return dict(session.execute(select(Node.id, Node.name).where(Node.id.in_(ids))).all())
