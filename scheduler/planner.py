"""The placement plan: given what waits and what each node has free, which attempt runs where.

A pure function over plain values, so one pass can be tested, simulated and measured without a
store. Waiting attempts are taken in rank order (scheduler.ordering). Each goes to a node with the
free capacity it needs: within its owner's quotas and its array's limit, on the node it is pinned
to if any, never on GPUs reserved for a higher-ranked op unless its time limit ends before that
reservation starts (backfill). One that fits nowhere now is given a reservation: the GPUs of the
node where it fits soonest, known from the time limits of what runs there, held from that time.
Every attempt left waiting is told why.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# At most this many waiting attempts get a reservation in one pass (Slurm's bf_max_job_test):
# each one after the first only ever pushes later ones further out.
MAX_RESERVATIONS = 32


@dataclass(frozen=True, slots=True)
class Want:
    """One waiting attempt, as placement sees it."""

    attempt_id: int
    job_id: int
    owner_id: int
    market_id: int
    # GPUs it needs; 0 for an op of a CPU market, which takes one CPU slot.
    gpus: int
    timeout_s: int
    priority: int = 0
    created_at: datetime = datetime.min
    array_id: int | None = None
    # The node that holds its volumes, when it must run there.
    pinned_node_id: int | None = None
    needs_endpoints: bool = False
    # Nodes where an earlier attempt of the op failed: used only when no other node fits.
    avoid: frozenset[int] = frozenset()


@dataclass
class NodeRoom:
    """A node that takes work, with what is free on it and when what is busy frees."""

    id: int
    name: str
    # Each GPU's UUID and its memory (MB), for best fit.
    gpu_vram: dict[str, int]
    # For each market, which of its GPUs qualify.
    qualifies: dict[int, frozenset[str]]
    # Busy GPUs, with when their holder's time limit ends.
    busy_until: dict[str, datetime] = field(default_factory=dict)
    slots: int = 0
    slots_busy: int = 0
    serves_endpoints: bool = False
    # The markets it takes work of (a CPU market needs no GPU).
    markets: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Placement:
    attempt_id: int
    node_id: int
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Reservation:
    attempt_id: int
    node_id: int
    gpus: tuple[str, ...]
    start: datetime


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    reservations: dict[int, Reservation] = field(default_factory=dict)
    # Why each attempt left waiting waits, and its place in line for its market.
    reasons: dict[int, str] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """What holds an owner or an array back, and what they hold now."""

    # (owner, market or None for every market) -> the most GPUs (or CPU slots) held at once.
    running_quota: dict[tuple[int, int | None], int] = field(default_factory=dict)
    # (owner, market) -> GPUs (or slots) held now.
    running: dict[tuple[int, int], int] = field(default_factory=dict)
    # array -> how many more of its jobs may start now.
    array_room: dict[int, int] = field(default_factory=dict)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan(
    wants: list[Want],
    nodes: list[NodeRoom],
    *,
    now: datetime,
    limits: Limits | None = None,
    market_names: dict[int, str] | None = None,
    never: dict[int, str] | None = None,
    max_reservations: int = MAX_RESERVATIONS,
) -> Plan:
    """Place wants, already in rank order, on nodes; nodes are updated as capacity is taken.

    never maps an attempt to why no online node could ever run it (it is skipped with that reason);
    at most max_reservations of those that fit nowhere now get a reservation, highest-ranked first.
    """
    limits = limits or Limits()
    names = market_names or {}
    never = never or {}
    result = Plan()
    by_id = {n.id: n for n in nodes}
    running = defaultdict(int, limits.running)
    owner_total: dict[int, int] = defaultdict(int)
    for (owner, _market), held in limits.running.items():
        owner_total[owner] += held
    array_room = dict(limits.array_room)
    # Per GPU (node, uuid): the earliest start of a reservation holding it, and when it is free of
    # what runs and what is reserved on it.
    reserved_from: dict[tuple[int, str], datetime] = {}
    free_from: dict[tuple[int, str], datetime] = {}
    for node in nodes:
        for uuid, until in node.busy_until.items():
            free_from[(node.id, uuid)] = max(until, now)
    # Nodes by market, so a want looks only at nodes that can run its market.
    by_market: dict[int, list[NodeRoom]] = defaultdict(list)
    for node in nodes:
        for market in node.markets:
            by_market[market].append(node)
    in_line: dict[int, int] = defaultdict(int)
    reservations = 0
    # Per market, the nodes with enough free qualifying GPUs (or a free slot) for one of its ops,
    # kept as work is placed, so a want looks only where something is free.
    # (A market's ops all need the same GPUs; keyed by both all the same.)
    shapes = {(w.market_id, w.gpus) for w in wants}
    roomy = {(m, g): {n.id for n in by_market.get(m, []) if _has_room(n, m, g)} for m, g in shapes}
    # Per market, the shortest time limit that found no room: a longer one finds none either (placing
    # only takes room), so it need not look.
    no_room_from: dict[tuple[int, int], int] = {}
    soonest_on: dict[tuple, tuple] = {}

    for want in wants:
        market = names.get(want.market_id, f"market {want.market_id}")
        if want.attempt_id in never:
            result.reasons[want.attempt_id] = never[want.attempt_id]
            continue
        held_back = _held_back(want, running, owner_total, limits, array_room)
        if held_back:
            result.reasons[want.attempt_id] = held_back
            continue
        restricted = want.pinned_node_id is not None or want.needs_endpoints
        if want.pinned_node_id is not None and want.pinned_node_id not in by_id:
            result.reasons[want.attempt_id] = "waits for the node that holds its volumes to come back online"
            continue
        end = now + timedelta(seconds=want.timeout_s)
        spot = None
        shape = (want.market_id, want.gpus)
        if want.timeout_s < no_room_from.get(shape, 1 << 62):
            with_room = roomy.get(shape, set())
            if want.pinned_node_id is not None:
                looked = [by_id[want.pinned_node_id]] if want.pinned_node_id in with_room else []
            else:
                looked = [by_id[n] for n in with_room]
            if want.needs_endpoints:
                looked = [n for n in looked if n.serves_endpoints]
            spot = _fit_now(want, looked, end, reserved_from)
            if spot is None and not restricted:
                no_room_from[shape] = want.timeout_s
        if spot is not None:
            node, gpus = spot
            _take(node, gpus, end, free_from)
            _forget(soonest_on, node.id)
            for market, gpus_needed in shapes:
                if market in node.markets and not _has_room(node, market, gpus_needed):
                    roomy[(market, gpus_needed)].discard(node.id)
            units = len(gpus) or 1
            running[(want.owner_id, want.market_id)] += units
            owner_total[want.owner_id] += units
            if want.array_id is not None and want.array_id in array_room:
                array_room[want.array_id] -= 1
            result.placements.append(Placement(want.attempt_id, node.id, gpus))
            continue
        in_line[want.market_id] += 1
        result.positions[want.attempt_id] = in_line[want.market_id]
        reason = f"{ordinal(in_line[want.market_id])} in line for {market}"
        if want.gpus and reservations < max_reservations:
            candidates = by_market.get(want.market_id, [])
            if want.pinned_node_id is not None:
                candidates = [by_id[want.pinned_node_id]]
            if want.needs_endpoints:
                candidates = [n for n in candidates if n.serves_endpoints]
            held = _reserve(want, candidates, now, free_from, reserved_from, soonest_on)
            if held is not None:
                _forget(soonest_on, held.node_id)
                reservations += 1
                result.reservations[want.attempt_id] = held
                node_name = by_id[held.node_id].name
                reason = f"{reason}; GPUs reserved on {node_name} from {held.start:%H:%M:%S} UTC"
        result.reasons[want.attempt_id] = reason
    return result


def _forget(soonest_on: dict, node_id: int) -> None:
    for key in [k for k in soonest_on if k[0] == node_id]:
        del soonest_on[key]


def _has_room(node: NodeRoom, market: int, gpus: int) -> bool:
    """Whether node has free what one op of market needs, reservations aside."""
    if gpus == 0:
        return node.slots_busy < node.slots
    return sum(1 for u in node.qualifies.get(market, ()) if u not in node.busy_until) >= gpus


def _held_back(want: Want, running, owner_total, limits: Limits, array_room: dict[int, int]) -> str | None:
    """Why an owner's quota or an array's limit keeps want from starting now, if either does."""
    units = want.gpus or 1

    def things(n: int) -> str:
        return f"{n} {'GPU' if want.gpus else 'CPU slot'}{'' if n == 1 else 's'}"

    market_quota = limits.running_quota.get((want.owner_id, want.market_id))
    if market_quota is not None and running[(want.owner_id, want.market_id)] + units > market_quota:
        return f"your quota of {things(market_quota)} on this market is in use"
    overall = limits.running_quota.get((want.owner_id, None))
    if overall is not None and owner_total[want.owner_id] + units > overall:
        return f"your quota of {things(overall)} is in use"
    if want.array_id is not None and array_room.get(want.array_id, 1) <= 0:
        return "its array runs as many jobs at once as its limit allows"
    return None


def _usable(node: NodeRoom, want: Want, end: datetime, reserved_from) -> list[str]:
    """The free GPUs of node that qualify for want, leaving out those reserved before it would end."""
    out = []
    for uuid in node.qualifies.get(want.market_id, ()):
        if uuid in node.busy_until:
            continue
        start = reserved_from.get((node.id, uuid))
        if start is not None and end > start:
            continue
        out.append(uuid)
    return out


def _fit_now(want: Want, candidates: list[NodeRoom], end: datetime, reserved_from):
    """The node and GPUs want runs on now: the tightest fit, a node it failed on only as a last resort."""
    best = None
    best_key = None
    for node in candidates:
        if want.gpus == 0:
            if node.slots_busy >= node.slots:
                continue
            key = (node.id in want.avoid, node.slots - node.slots_busy, node.id)
            if best_key is None or key < best_key:
                best, best_key = (node, ()), key
            continue
        usable = _usable(node, want, end, reserved_from)
        if len(usable) < want.gpus:
            continue
        # Best fit: the smallest cards that will do, on the node left with the fewest free GPUs.
        usable.sort(key=lambda u: (node.gpu_vram.get(u, 0), u))
        key = (node.id in want.avoid, len(usable) - want.gpus, node.id)
        if best_key is None or key < best_key:
            best, best_key = (node, tuple(usable[: want.gpus])), key
    return best


def _take(node: NodeRoom, gpus: tuple[str, ...], end: datetime, free_from) -> None:
    if not gpus:
        node.slots_busy += 1
        return
    for uuid in gpus:
        node.busy_until[uuid] = end
        free_from[(node.id, uuid)] = end


def _reserve(want: Want, candidates: list[NodeRoom], now: datetime, free_from, reserved_from,
             soonest_on: dict) -> Reservation | None:
    """Hold the GPUs where want fits soonest, from when they are all free; later ones see them taken.

    soonest_on caches, per (node, market, GPUs), when and on which GPUs such an op could start; the
    caller drops a node's entries when what is free there changes.
    """
    best: Reservation | None = None
    best_key = None
    for node in candidates:
        cached = soonest_on.get((node.id, want.market_id, want.gpus))
        if cached is None:
            qualifying = node.qualifies.get(want.market_id)
            if not qualifying or len(qualifying) < want.gpus:
                continue
            times = [(free_from.get((node.id, u), now), u) for u in qualifying]
            soonest = heapq.nsmallest(want.gpus, times) if want.gpus < len(times) else sorted(times)
            cached = soonest_on[(node.id, want.market_id, want.gpus)] = (soonest[-1][0], tuple(u for _, u in soonest))
        start, gpus = cached
        key = (start, node.id in want.avoid)
        if best_key is None or key < best_key:
            best_key = key
            best = Reservation(want.attempt_id, node.id, gpus, start)
    if best is None:
        return None
    end = best.start + timedelta(seconds=want.timeout_s)
    for uuid in best.gpus:
        key = (best.node_id, uuid)
        reserved_from[key] = min(reserved_from.get(key, best.start), best.start)
        free_from[key] = end
    return best
