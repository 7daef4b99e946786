"""Placement passes: the scheduler decides which node runs each waiting attempt.

A pass reads what waits and what each node has free (plain Core selects, no ORM unit of work),
ranks the waiting attempts (scheduler.ordering), plans (scheduler.planner), and records the plan:
each placed attempt's node, GPUs and time, every waiting attempt's reason and reservation. The
offers of the placed attempts go to their nodes' queues after the transaction commits; a node
claims as before, and the server checks every claim. An offer left unclaimed for
settings.claim_within_s is withdrawn and placed again, elsewhere if its node went away.

Anything that adds or frees work (a submit, an attempt's end, a node joining or changing) asks for
a pass with want_pass(session); the leading scheduler runs one as soon as that transaction
commits, and every second regardless. When a node reports an attempt finished, the node's next
work is placed at once and handed back in the answer (hand_off), so freed GPUs do not idle while
the report waits for a pass and the node for an offer.

At most one pass writes at a time: each locks the `placement` row of the leases table before it
writes (SQLite's single writer does the same there). A pass and a hand-off write only attempts that
still wait unplaced, and a claim is refused GPUs another attempt holds, so they cannot give one
attempt, or one GPU, twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from protocol.gpus import gb_text, gpu_satisfies
from scheduler import offers
from scheduler.models import Attempt, Job, JobArray, Lease, Market, Node, NodeGpu, Op
from scheduler.ordering import rank, recent_use
from scheduler.planner import Limits, NodeRoom, Plan, Want, plan
from scheduler.quotas import running_gpu_limits
from scheduler.states import ATTEMPT_HELD, AttemptState, NodeState, utcnow

log = logging.getLogger(__name__)

_WANTED = "peergrid.pass_wanted"
# Set when an attempt's end freed what it held; a hand-off to that node (hand_off) settles it.
_FREED = "peergrid.capacity_freed"
PLACEMENT_LOCK = "placement"
# Nodes that take work.
TAKING = (NodeState.ONLINE, NodeState.BUSY)
# How many waiting attempts one hand-off considers for a node.
HAND_OFF_CANDIDATES = 200


def want_pass(session: Session) -> None:
    """Ask for a placement pass once this session's transaction commits."""
    session.info[_WANTED] = True


def freed(session: Session) -> None:
    """Note that an attempt's end freed what it held: a pass is wanted unless a hand-off places on that node."""
    session.info[_FREED] = True


def take_wanted(session: Session) -> bool:
    """Whether the transaction asked for a pass, or freed capacity no hand-off took up; forgets both."""
    wanted = bool(session.info.pop(_WANTED, False))
    return bool(session.info.pop(_FREED, False)) or wanted


def lock_placement(session: Session, now: datetime | None = None) -> None:
    """Take the placement lock for the rest of the transaction, making its row if there is none."""
    now = now or utcnow()
    locked = session.execute(
        update(Lease).where(Lease.name == PLACEMENT_LOCK).values(acquired_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not locked:
        from sqlalchemy.exc import IntegrityError

        try:
            with session.begin_nested():
                session.add(Lease(name=PLACEMENT_LOCK, holder="placement", acquired_at=now, expires_at=now))
        except IntegrityError:
            session.execute(update(Lease).where(Lease.name == PLACEMENT_LOCK).values(acquired_at=now))


@dataclass
class Snapshot:
    """What a pass places from."""

    wants: list[Want]
    nodes: list[NodeRoom]
    limits: Limits
    market_names: dict[int, str]
    never: dict[int, str]
    # attempt -> (reason, reserved node, reserved from) as stored, to write only what changed.
    stored: dict[int, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    placed: int
    waiting: int
    withdrawn: int
    reserved: int


# -- reading -----------------------------------------------------------------------------------


def _read(session: Session, query):
    """Rows of a select of columns, through the session's connection: no ORM row processing."""
    return session.connection().execute(query)


def _markets(session: Session) -> dict[int, Market]:
    return {m.id: m for m in session.scalars(select(Market))}


def node_rooms(session: Session, markets: dict[int, Market], *, now: datetime, node_ids=None) -> list[NodeRoom]:
    """The nodes that take work, with their free capacity and when their busy GPUs free."""
    query = select(Node.id, Node.name, Node.slots, Node.serves_endpoints, Node.simulated).where(Node.state.in_(TAKING))
    if node_ids is not None:
        query = query.where(Node.id.in_(node_ids))
    nodes = {row[0]: row for row in _read(session, query)}
    if not nodes:
        return []
    taking = select(Node.id).where(Node.state.in_(TAKING))
    if node_ids is not None:
        taking = taking.where(Node.id.in_(node_ids))
    gpus = defaultdict(list)
    gpu_query = select(NodeGpu.node_id, NodeGpu.uuid, NodeGpu.name, NodeGpu.memory_total_mb,
                       NodeGpu.compute_capability, NodeGpu.cuda_version).where(NodeGpu.node_id.in_(taking))
    for node_id, uuid, name, memory, capability, cuda in _read(session, gpu_query):
        gpus[node_id].append((uuid, (name, memory, capability, cuda)))
    gpu_markets = [(m.id, m.gpu_count, m) for m in markets.values() if m.gpu_count]
    cpu_markets = [m.id for m in markets.values() if not m.gpu_count]
    # Whether a kind of GPU (model, memory, capability, CUDA; simulated or not) serves a market, asked once a kind.
    serves: dict[tuple, bool] = {}

    def qualifies(market, kind, simulated) -> bool:
        key = (market.id, kind, simulated)
        if key not in serves:
            name, memory, capability, cuda = kind
            facts = SimpleNamespace(name=name, memory_total_mb=memory, compute_capability=capability, cuda_version=cuda)
            serves[key] = gpu_satisfies(facts, market, simulated=simulated)
        return serves[key]

    rooms: dict[int, NodeRoom] = {}
    for node_id, (_, name, slots, serves_endpoints, simulated) in nodes.items():
        own = gpus[node_id]
        kinds = {kind for _, kind in own}
        fits: dict[int, frozenset[str]] = {}
        served = set(cpu_markets) if slots > 0 else set()
        for market_id, count, market in gpu_markets:
            if len(own) < count:
                continue
            if len(kinds) == 1:  # the usual node: one kind of GPU, all of them serve or none
                fitting = [u for u, _ in own] if qualifies(market, next(iter(kinds)), simulated) else []
            else:
                fitting = [u for u, kind in own if qualifies(market, kind, simulated)]
            if len(fitting) >= count:
                fits[market_id] = frozenset(fitting)
                served.add(market_id)
        rooms[node_id] = NodeRoom(
            id=node_id, name=name, gpu_vram={u: kind[1] for u, kind in own}, qualifies=fits, slots=slots,
            serves_endpoints=serves_endpoints, markets=frozenset(served),
        )
    # What each node holds (claimed or running) and what is placed on it, with when each ends.
    held = select(Attempt.node_id, Attempt.gpus, Attempt.started_at, Attempt.claimed_at, Op.timeout_s).join(
        Op, Op.id == Attempt.op_id).where(Attempt.state.in_(ATTEMPT_HELD), Attempt.node_id.in_(taking))
    placed = select(Attempt.placed_node_id, Attempt.placed_gpus, Attempt.placed_at, Attempt.placed_at, Op.timeout_s).join(
        Op, Op.id == Attempt.op_id).where(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.in_(taking))
    for query in (held, placed):
        for node_id, uuids, started_at, claimed_at, timeout_s in _read(session, query):
            room = rooms.get(node_id)
            if room is None:
                continue
            ends = (started_at or claimed_at or now) + timedelta(seconds=timeout_s)
            if uuids:
                for uuid in uuids:
                    room.busy_until[uuid] = ends
            else:
                room.slots_busy += 1
    return list(rooms.values())


def _wants_query():
    return (
        select(Attempt.id, Attempt.created_at, Attempt.pinned_node_id, Attempt.waiting, Attempt.reserved_node_id,
               Attempt.reserved_from, Attempt.line_position, Op.id.label("op_id"), Op.job_id, Op.market_id, Op.timeout_s, Op.exposes,
               Job.owner_id, Job.priority, Job.array_id)
        .join(Op, Op.id == Attempt.op_id)
        .join(Job, Job.id == Op.job_id)
        .where(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_(None))
    )


def _wants(session: Session, rows, markets: dict[int, Market], stored: dict[int, tuple]) -> list[Want]:
    rows = [tuple(r) for r in rows]
    failed_on = _failed_nodes(session, [r[7] for r in rows])
    gpus = {m.id: m.gpu_count for m in markets.values()}
    none: frozenset[int] = frozenset()
    wants = []
    for (attempt_id, created_at, pinned, waiting, reserved_node, reserved_from, position, op_id, job_id, market_id,
         timeout_s, exposes, owner_id, priority, array_id) in rows:
        stored[attempt_id] = (waiting, reserved_node, reserved_from, position)
        wants.append(Want(attempt_id, job_id, owner_id, market_id, gpus[market_id], timeout_s, priority or 0,
                          created_at, array_id, pinned, bool(exposes), failed_on.get(op_id, none)))
    return wants


def _failed_nodes(session: Session, op_ids: list[int]) -> dict[int, frozenset[int]]:
    """For each op, the nodes where an earlier attempt of it failed."""
    if not op_ids:
        return {}
    waiting_ops = select(Attempt.op_id).where(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_(None))
    query = select(Attempt.op_id, Attempt.node_id).where(
        Attempt.state == AttemptState.FAILED, Attempt.node_id.is_not(None), Attempt.op_id.in_(waiting_ops)
    )
    if len(op_ids) <= 500:  # a hand-off's few: name them
        query = query.where(Attempt.op_id.in_(op_ids))
    wanted = set(op_ids)
    found = defaultdict(set)
    for op_id, node_id in _read(session, query):
        if op_id in wanted:
            found[op_id].add(node_id)
    return {op: frozenset(nodes) for op, nodes in found.items()}


def _limits(session: Session, wants: list[Want], markets: dict[int, Market]) -> Limits:
    quotas = running_gpu_limits(session)
    running: dict[tuple[int, int], int] = defaultdict(int)
    owners = {w.owner_id for w in wants}
    if quotas and owners:
        for owner_id, market_id, gpus, placed in _read(session, 
            select(Job.owner_id, Op.market_id, Attempt.gpus, Attempt.placed_gpus)
            .join(Op, Op.id == Attempt.op_id).join(Job, Job.id == Op.job_id)
            .where(Job.owner_id.in_(owners), or_(
                Attempt.state.in_(ATTEMPT_HELD),
                and_(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_not(None)),
            ))
        ):
            running[(owner_id, market_id)] += len(gpus or placed or []) or 1
    arrays = {w.array_id for w in wants if w.array_id is not None}
    room: dict[int, int] = {}
    if arrays:
        limits = dict(session.execute(
            select(JobArray.id, JobArray.max_running).where(JobArray.id.in_(arrays), JobArray.max_running.is_not(None))
        ).all())
        if limits:
            from scheduler.arrays import running_counts  # arrays asks placing for passes

            busy = running_counts(session, limits)
            room = {array_id: most - busy.get(array_id, 0) for array_id, most in limits.items()}
    return Limits(running_quota=quotas, running=dict(running), array_room=room)


def _never(wants: list[Want], nodes: list[NodeRoom], markets: dict[int, Market]) -> dict[int, str]:
    """Wants no node that takes work now could ever run, with a sentence saying so."""
    served = set()
    endpoints_served = set()
    for node in nodes:
        served |= node.markets
        if node.serves_endpoints:
            endpoints_served |= node.markets
    out = {}
    for want in wants:
        if want.pinned_node_id is not None:
            continue
        if want.market_id not in served:
            out[want.attempt_id] = f"no online node has {_hardware(markets[want.market_id])}"
        elif want.needs_endpoints and want.market_id not in endpoints_served:
            out[want.attempt_id] = (
                f"no online node with {_hardware(markets[want.market_id])} can serve the ports it exposes "
                "(each runs its containers without a network)"
            )
    return out


def _hardware(market: Market) -> str:
    if not market.gpu_count:
        return "a free CPU slot"
    text = f"{market.gpu_count} GPU" + ("s" if market.gpu_count > 1 else "")
    if market.min_vram_mb:
        text += f" of {gb_text(market.min_vram_mb)} GB"
    if market.gpu_models:
        text += f" ({', '.join(market.gpu_models)})"
    return text


def snapshot(session: Session, *, now: datetime, half_life_s: float) -> tuple[Snapshot, dict[int, float]]:
    markets = _markets(session)
    stored: dict[int, tuple] = {}
    wants = _wants(session, _read(session, _wants_query()), markets, stored)
    nodes = node_rooms(session, markets, now=now)
    snap = Snapshot(
        wants=wants, nodes=nodes, limits=_limits(session, wants, markets),
        market_names={m.id: m.slug for m in markets.values()}, never=_never(wants, nodes, markets), stored=stored,
    )
    return snap, recent_use(session, half_life_s=half_life_s, now=now)


# -- writing -----------------------------------------------------------------------------------


def record(session: Session, snap: Snapshot, result: Plan, *, now: datetime, send_offers: bool = True) -> None:
    """Store the plan: placements (with their offers staged, unless the caller claims them at once),
    and the reasons and reservations that changed."""
    if result.placements:
        # Only what still waits unplaced: the plan was made from reads that took no lock, and a
        # hand-off or a cancel may have come in between.
        session.connection().execute(
            update(Attempt)
            .where(Attempt.id == bindparam("b_attempt"), Attempt.state == AttemptState.QUEUED,
                   Attempt.placed_node_id.is_(None))
            .values(placed_node_id=bindparam("b_node"), placed_gpus=bindparam("b_gpus"), placed_at=now,
                    offered_at=now, waiting=None, line_position=None, reserved_node_id=None, reserved_from=None),
            [{"b_attempt": p.attempt_id, "b_node": p.node_id, "b_gpus": list(p.gpus)} for p in result.placements],
        )
        taken = set()
        for chunk in range(0, len(result.placements), 5000):
            ids = [p.attempt_id for p in result.placements[chunk:chunk + 5000]]
            taken |= set(_read(session, select(Attempt.id).where(Attempt.id.in_(ids), Attempt.placed_at == now)).scalars())
        result.placements = [p for p in result.placements if p.attempt_id in taken]
        if send_offers:
            offers.stage_placed(session, result.placements)
    changed = []
    for want in snap.wants:
        reason = result.reasons.get(want.attempt_id)
        if reason is None:
            continue
        held = result.reservations.get(want.attempt_id)
        new = (reason, held.node_id if held else None, held.start if held else None,
               result.positions.get(want.attempt_id))
        if snap.stored.get(want.attempt_id) != new:
            changed.append({"id": want.attempt_id, "waiting": new[0], "reserved_node_id": new[1],
                            "reserved_from": new[2], "line_position": new[3]})
    if changed:
        session.execute(update(Attempt).execution_options(synchronize_session=False), changed)


def withdraw_unclaimed(session: Session, *, older_than_s: float, now: datetime) -> int:
    """Take back placements their node did not claim in time, or whose node stopped taking work."""
    cutoff = now - timedelta(seconds=older_than_s)
    gone = select(Node.id).where(Node.state.not_in(TAKING))
    result = session.execute(
        update(Attempt)
        .where(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_not(None),
               or_(Attempt.placed_at < cutoff, Attempt.placed_node_id.in_(gone)))
        .values(placed_node_id=None, placed_gpus=[], placed_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def run_pass(session: Session, *, half_life_s: float, claim_within_s: float, now: datetime | None = None) -> PassResult:
    """One placement pass; the caller commits, which sends the offers.

    It reads and plans first, taking no lock (on SQLite, a read holds none; writers go on), then
    locks, withdraws what was left unclaimed (placed again by the next pass) and writes the plan.
    """
    now = now or utcnow()
    snap, use = snapshot(session, now=now, half_life_s=half_life_s)
    result = plan(rank(snap.wants, use), snap.nodes, now=now, limits=snap.limits,
                  market_names=snap.market_names, never=snap.never)
    lock_placement(session, now)
    withdrawn = withdraw_unclaimed(session, older_than_s=claim_within_s, now=now)
    record(session, snap, result, now=now)
    if withdrawn:
        log.info("withdrew %d offer(s) their nodes did not claim", withdrawn)
    return PassResult(placed=len(result.placements), waiting=len(result.reasons), withdrawn=withdrawn,
                      reserved=len(result.reservations))


# -- the hand-off at an attempt's end ---------------------------------------------------------


def hand_off(session: Session, node: Node, *, half_life_s: float, now: datetime | None = None) -> list[int]:
    """Place on node, now, the best-ranked waiting work that fits what it has free; return the ids
    of the attempts placed, for the caller to claim for the node.

    The candidates are the first HAND_OFF_CANDIDATES waiting attempts of the markets the node serves
    by priority and age; reservations other passes made stand: work goes on a reserved GPU only if
    it ends before the reservation starts, or if it is the reserved attempt itself.
    """
    if node.state not in TAKING:
        return []
    now = now or utcnow()
    # The node the freed capacity was on is placed now; what is left free there no waiting work fits.
    session.info.pop(_FREED, None)
    # No placement lock: a hand-off writes only attempts still unplaced, as a pass does, and a GPU
    # both take is refused to the second claim; so finishes on many nodes do not wait on each other.
    markets = _markets(session)
    rooms = node_rooms(session, markets, now=now, node_ids=[node.id])
    if not rooms:
        return []
    room = rooms[0]
    free_gpus = set(room.gpu_vram) - set(room.busy_until)
    if not free_gpus and room.slots_busy >= room.slots:
        return []
    stored: dict[int, tuple] = {}
    fits_here = (Op.market_id.in_(list(room.markets)),
                 or_(Attempt.pinned_node_id.is_(None), Attempt.pinned_node_id == node.id))
    # The candidates, through the index on (state, line_position): first those the last pass put in
    # line, in its order (priority, fair share, age); then those made since, which it has not ranked.
    in_line = (_wants_query().where(*fits_here, Attempt.line_position.is_not(None))
               .order_by(Attempt.line_position, Attempt.id).limit(HAND_OFF_CANDIDATES))
    since = (_wants_query().where(*fits_here, Attempt.line_position.is_(None))
             .order_by(Attempt.id).limit(HAND_OFF_CANDIDATES))
    # Reservations held on this node by other waiting attempts keep their GPUs from longer work.
    held_for = set(session.scalars(
        select(Attempt.id).where(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_(None),
                                 Attempt.reserved_node_id == node.id)
    ))
    ranked_rows = list(_read(session, in_line))
    new_rows = list(_read(session, since))
    missing = held_for - {r.id for r in ranked_rows} - {r.id for r in new_rows}
    if missing:
        ranked_rows += list(_read(session, _wants_query().where(Attempt.id.in_(missing))))
    ranked = _wants(session, ranked_rows, markets, stored)
    new = _wants(session, new_rows, markets, stored)
    if not ranked and not new:
        return []
    # The attempts holding reservations here go first, each given the same reservation again (the
    # planner finds the same soonest GPUs on the same node), so work placed after them backfills:
    # onto a reserved GPU only when it ends before that reservation starts.
    use = recent_use(session, half_life_s=half_life_s, now=now, owners={w.owner_id for w in new}) if new else {}
    ordered = ([w for w in ranked if w.attempt_id in held_for] + [w for w in ranked if w.attempt_id not in held_for]
               + [w for w in rank(new, use) if w.attempt_id not in held_for])
    limits = _limits(session, ordered, markets)
    result = plan(ordered, [room], now=now, limits=limits, max_reservations=len(held_for))
    record(session, Snapshot(wants=[], nodes=[], limits=limits, market_names={}, never={}),
           Plan(placements=result.placements), now=now, send_offers=False)
    return [p.attempt_id for p in result.placements]
