"""A heartbeat's reads and writes in the store, without the ORM's unit of work.

At 100 heartbeats a second the ORM's flush was most of a heartbeat's cost. Here a heartbeat reads
its node and GPUs in one Core select, compares what the node reports with what is stored, and
writes only what changed, column by column: a heartbeat that changes nothing writes nothing but
its time (and, on real GPUs, their readings), which a web process batches (scheduler.last_seen).
A change that placement reads (the node's state or hardware, its GPUs and their memory) asks for
a placement pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from protocol.messages import GatewayRef, GpuReport, NodeReport
from scheduler.accounts import hash_token
from scheduler.errors import AuthenticationError, Banned
from scheduler.last_seen import SeenBuffer, Telemetry
from scheduler.models import Attempt, Gateway, Node, NodeGpu, Op
from scheduler.states import ATTEMPT_HELD, NodeState, move

# A GPU's columns that decide where work can go: a change asks for a placement pass.
GPU_FACTS = ("index", "name", "memory_total_mb", "compute_capability", "driver_version", "cuda_version")
# Readings that change all the time and decide nothing: batched where a buffer is given.
GPU_READINGS = ("memory_free_mb", "utilization_pct", "temperature_c")
# The node's columns a report sets, and of those the ones that decide where work can go.
NODE_REPORTED = ("simulated", "gpu_message", "agent_version", "hostname", "cpu_count", "memory_mb", "slots",
                 "serves_endpoints")
NODE_FACTS = frozenset({"simulated", "cpu_count", "memory_mb", "slots", "serves_endpoints"})

_NODE_COLUMNS = ("id", "name", "state", "drain_requested", "removed_at", "banned_at", "ban_reason", *NODE_REPORTED)
_GPU_COLUMNS = ("id", "uuid", *GPU_FACTS, *GPU_READINGS)


@dataclass
class HeardNode:
    """A node as a heartbeat reads it: its row's columns and its GPUs' (by UUID)."""

    id: int
    name: str
    state: NodeState
    drain_requested: bool
    removed_at: datetime | None
    banned_at: datetime | None
    ban_reason: str | None
    simulated: bool
    gpu_message: str | None
    agent_version: str | None
    hostname: str | None
    cpu_count: int
    memory_mb: int
    slots: int
    serves_endpoints: bool
    gpus: dict[str, Any]

    @classmethod
    def of(cls, node: Node) -> "HeardNode":
        """From a loaded ORM node (callers outside the web's hot path)."""
        gpus = {g.uuid: SimpleNamespace(**{c: getattr(g, c) for c in _GPU_COLUMNS}) for g in node.gpus}
        return cls(**{c: getattr(node, c) for c in _NODE_COLUMNS}, gpus=gpus)


@cache  # built once: building a statement costs more than running it on this path
def _node_by_token():
    node_columns = [getattr(Node, c) for c in _NODE_COLUMNS]
    gpu_columns = [getattr(NodeGpu, c).label(f"gpu_{c}") for c in _GPU_COLUMNS]
    return (
        select(*node_columns, *gpu_columns)
        .select_from(Node)
        .outerjoin(NodeGpu, NodeGpu.node_id == Node.id)
        .where(Node.token_hash == bindparam("token_hash"))
    )


@cache  # built once: building a statement costs more than running it on this path
def _live_gateways():
    return (
        select(Gateway.name, Gateway.ssh_address, Gateway.host_key)
        .where(Gateway.expires_at > bindparam("now"))
        .order_by(Gateway.name)
    )


@cache  # built once: building a statement costs more than running it on this path
def _held_attempts():
    return (
        select(Attempt.id, Op.timeout_s, Attempt.claimed_at)
        .join(Op, Op.id == Attempt.op_id)
        .where(Attempt.node_id == bindparam("node"), Attempt.state.in_(ATTEMPT_HELD))
    )


def held_attempts(session: Session, node_id: int) -> list[tuple[int, int, datetime | None]]:
    """The attempts a node holds: id, its op's time limit in seconds, when it was claimed."""
    return session.connection().execute(_held_attempts(), {"node": node_id}).all()


def heard_node(session: Session, token: str) -> HeardNode:
    """The node a token belongs to, with its GPUs, in one select.

    Raises:
        AuthenticationError: unknown, or its node was removed.
        Banned: an admin banned the node.
    """
    rows = session.connection().execute(_node_by_token(), {"token_hash": hash_token(token)}).all()
    if not rows or rows[0].removed_at is not None:
        raise AuthenticationError("The node token is unknown; create a node with `peergrid node create`.")
    first = rows[0]
    if first.banned_at is not None:
        raise Banned(f"Node {first.name} is banned: {first.ban_reason or 'ask an admin why'}.")
    gpus = {
        row.gpu_uuid: SimpleNamespace(**{c: getattr(row, f"gpu_{c}") for c in _GPU_COLUMNS})
        for row in rows if row.gpu_id is not None
    }
    return HeardNode(**{c: getattr(first, c) for c in _NODE_COLUMNS}, gpus=gpus)


@dataclass(frozen=True)
class Outcome:
    """What writing a report changed: the node's state now, and whether placement should look again."""

    state: NodeState
    placement_changed: bool
    wrote: int


def write_report(
    session: Session,
    node: HeardNode,
    report: NodeReport,
    *,
    holds: bool,
    now: datetime,
    seen: SeenBuffer | None = None,
) -> Outcome:
    """Bring the node's row and GPUs in line with its report, writing only what differs.

    With a buffer, the heard time and the GPUs' readings go to it unless the node's row is written
    anyway; without, they are written here.
    """
    conn = session.connection()
    changes: dict[str, Any] = {}
    for name in NODE_REPORTED:
        value = getattr(report, name)
        if name == "slots":
            value = max(1, value)
        if getattr(node, name) != value:
            changes[name] = value
    placement_changed = bool(NODE_FACTS.intersection(changes))
    state = _next_state(node, holds=holds or bool(report.running), now=now)
    if state != node.state:
        changes["state"] = state
        placement_changed = True
    gpus_changed, readings, wrote = _write_gpus(conn, node, report.gpus, batch=seen is not None)
    placement_changed = placement_changed or gpus_changed
    if changes or seen is None:
        # The row is written anyway: its heard time goes with it.
        changes["last_heartbeat_at"] = now
        conn.execute(update(Node).where(Node.id == node.id).values(**changes))
        wrote += 1
        if seen is not None:
            seen.note_readings(readings)
    else:
        seen.note(node.id, readings)
    return Outcome(state=state, placement_changed=placement_changed, wrote=wrote)


def _next_state(node: HeardNode, *, holds: bool, now: datetime) -> NodeState:
    """The state a report moves the node to, checked as any move is (scheduler.states.move)."""
    wanted = NodeState.DRAINING if node.drain_requested else (NodeState.BUSY if holds else NodeState.ONLINE)
    # A drain outlives the node going silent: it comes back draining, as its owner left it.
    probe = SimpleNamespace(id=node.id, state=node.state)
    move(probe, wanted, now=now)
    return probe.state


def _write_gpus(
    conn: Connection, node: HeardNode, reports: tuple[GpuReport, ...], *, batch: bool
) -> tuple[bool, dict[int, Telemetry | None], int]:
    """Insert new GPUs, update changed ones, delete vanished ones.

    Returns whether a fact placement reads changed, the readings left to a buffer (None for a GPU
    whose stored readings are current), and how many statements wrote."""
    reported = {g.uuid: g for g in reports}  # a UUID reported twice: the last one counts
    changed = False
    readings: dict[int, Telemetry | None] = {}
    wrote = 0
    new = []
    for uuid, report in reported.items():
        row = node.gpus.get(uuid)
        values = {f.name: getattr(report, f.name) for f in fields(report)}
        if row is None:
            new.append({**values, "node_id": node.id})
            changed = True
            continue
        facts = {c: values[c] for c in GPU_FACTS if getattr(row, c) != values[c]}
        read = {c: values[c] for c in GPU_READINGS if getattr(row, c) != values[c]}
        changed = changed or bool(facts)
        if batch:
            # Readings alone wait in the buffer; with facts, they ride along with the write.
            readings[row.id] = Telemetry(*(values[c] for c in GPU_READINGS)) if read and not facts else None
            if not facts:
                continue
        if facts or read:
            conn.execute(update(NodeGpu).where(NodeGpu.id == row.id).values(**facts, **read))
            wrote += 1
    gone = [row.id for uuid, row in node.gpus.items() if uuid not in reported]
    if gone:
        conn.execute(delete(NodeGpu).where(NodeGpu.id.in_(gone)))
        changed = True
        wrote += 1
    if new:
        conn.execute(insert(NodeGpu), new)
        wrote += 1
    return changed, readings, wrote


def gateway_refs(session: Session, *, now: datetime) -> tuple[GatewayRef, ...]:
    """The live gateways as a node is told of them, read as plain columns (scheduler.endpoints.gateway_refs)."""
    rows = session.connection().execute(_live_gateways(), {"now": now})
    return tuple(GatewayRef(name, address, key) for name, address, key in rows)
