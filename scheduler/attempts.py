"""What nodes report about the attempts they run: claim, start, log lines, finish.

The attempt id is the fencing token: a report about an attempt that is no longer the caller's
is refused with Conflict, whatever it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scheduler import events, ledger
from scheduler.errors import Conflict, NotFound
from scheduler.models import Attempt, LogLine, Node, Op
from scheduler.orchestration import advance, new_attempt, pinned_node_id
from scheduler.results import extract
from scheduler.secrets import job_masks, redact
from scheduler.states import (
    ATTEMPT_HELD,
    AttemptState,
    NodeState,
    OpState,
    can_move,
    move,
    utcnow,
)

STREAMS = ("stdout", "stderr", "system")


@dataclass(frozen=True)
class LogRecord:
    seq: int
    stream: str
    text: str


def claim_attempt(
    session: Session, node: Node, attempt_id: int, *, gpus: list[str] | None = None, now: datetime | None = None
) -> Attempt:
    """Give a queued attempt to node, on the GPUs it names; exactly one of any number of
    concurrent callers wins.

    Raises:
        NotFound: no such attempt.
        Conflict: the attempt was claimed already or cancelled, the node takes no work now, or
            the GPUs it names are not free or not what the op's market needs.
    """
    gpus = list(gpus or [])
    now = now or utcnow()
    if node.state in (NodeState.DRAINING, NodeState.OFFLINE):
        raise Conflict(f"Node {node.name} is {node.state.value} and takes no new work.")
    pending = session.get(Attempt, attempt_id)
    if pending is not None:
        pinned = pinned_node_id(pending.op)
        if pinned is not None and pinned != node.id:
            raise Conflict(f"Attempt {attempt_id} must run on the node that holds its volumes.")
        check_capacity(session, node, pending.op.market, gpus)
    assert can_move(AttemptState.QUEUED, AttemptState.CLAIMED)
    # A conditional update rather than move(): the WHERE clause is what makes the claim exclusive.
    result = session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.state == AttemptState.QUEUED)
        .values(state=AttemptState.CLAIMED, node_id=node.id, claimed_at=now, gpus=gpus)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        state = session.scalar(select(Attempt.state).where(Attempt.id == attempt_id))
        if state is None:
            raise NotFound(f"There is no attempt {attempt_id}.")
        raise Conflict(f"Attempt {attempt_id} is {state.value}, not waiting for a node.")
    attempt = session.get(Attempt, attempt_id, populate_existing=True)
    assert attempt is not None
    events.record(
        session, attempt.op.job_id, "claimed", f"{attempt.op.key}: claimed by node {node.name}.", attempt=attempt, now=now
    )
    return attempt


def check_capacity(session: Session, node: Node, market, gpus: list[str]) -> None:
    """Refuse a claim the node cannot honour: GPUs that are not its own, busy, or short of the market.

    Raises:
        Conflict: saying which.
    """
    held = list(
        session.scalars(select(Attempt).where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD)))
    )
    if market.gpu_count == 0:
        if gpus:
            raise Conflict(f"Market {market.slug} runs ops without GPUs.")
        if sum(1 for a in held if not a.gpus) >= node.slots:
            raise Conflict(f"Node {node.name} has no free CPU slot ({node.slots} in use).")
        return
    if len(gpus) != market.gpu_count or len(set(gpus)) != len(gpus):
        raise Conflict(f"Market {market.slug} needs {market.gpu_count} distinct GPU(s); the claim named {len(set(gpus))}.")
    own = {g.uuid: g for g in node.gpus}
    busy = {uuid for a in held for uuid in (a.gpus or [])}
    for uuid in gpus:
        gpu = own.get(uuid)
        if gpu is None:
            raise Conflict(f"GPU {uuid} is not one node {node.name} reported.")
        if uuid in busy:
            raise Conflict(f"GPU {uuid} is already running another op.")
        if gpu.memory_total_mb < market.min_vram_mb or (market.gpu_models and gpu.name not in market.gpu_models):
            raise Conflict(f"GPU {uuid} ({gpu.name}) does not meet market {market.slug}'s requirements.")


def held_attempt(session: Session, node: Node, attempt_id: int, *, lock: bool = True) -> Attempt:
    """Return an attempt that node holds now, locked for update.

    Raises:
        NotFound: no such attempt.
        Conflict: the attempt is not this node's, or is over.
    """
    query = select(Attempt).where(Attempt.id == attempt_id)
    if lock:
        query = query.with_for_update()
    attempt = session.scalar(query.execution_options(populate_existing=True))
    if attempt is None:
        raise NotFound(f"There is no attempt {attempt_id}.")
    if attempt.node_id != node.id or attempt.state not in ATTEMPT_HELD:
        raise Conflict(f"Attempt {attempt_id} is no longer this node's ({attempt.state.value}).")
    return attempt


def start_attempt(session: Session, node: Node, attempt_id: int, *, now: datetime | None = None) -> Attempt:
    """Record that the attempt's container is running."""
    now = now or utcnow()
    attempt = held_attempt(session, node, attempt_id)
    move(attempt, AttemptState.RUNNING, now=now)
    op = attempt.op
    events.record(session, op.job, "started", f"{op.key}: the container started on node {node.name}.", attempt=attempt, now=now)
    if op.state == OpState.QUEUED:
        move(op, OpState.RUNNING, now=now)
    advance(session, op.job, now=now)
    return attempt


@dataclass(frozen=True)
class LogsStored:
    """What became of a batch of log lines."""

    stored: int
    # The attempt's log reached its limit: the node should stop sending lines.
    full: bool


def append_logs(
    session: Session,
    node: Node,
    attempt_id: int,
    records: list[LogRecord],
    *,
    max_line_chars: int,
    max_bytes: int,
    now: datetime | None = None,
) -> LogsStored:
    """Store log lines in sequence order, ignoring any already stored, with the job owner's
    secrets masked, until the attempt's log holds max_bytes; then store one line saying so and
    discard the rest.
    """
    now = now or utcnow()
    attempt = held_attempt(session, node, attempt_id)
    fresh = sorted((r for r in records if r.seq > attempt.last_log_seq), key=lambda r: r.seq)
    if not fresh or attempt.log_full:
        return LogsStored(0, attempt.log_full)
    op = attempt.op
    # The node masks secrets already; this catches a node that did not.
    masked = job_masks(session, op.job_id)
    stored = 0
    for r in fresh:
        stream = r.stream if r.stream in STREAMS else "stdout"
        text = redact(r.text, masked)
        text = text if len(text) <= max_line_chars else text[:max_line_chars] + " […cut]"
        size = _utf8_size(text)
        if attempt.log_bytes + size > max_bytes:
            # The op is not failed for talking too much: it may still do its work and succeed.
            stream, text = "system", (
                f"[peergrid] The log of this attempt passed the {_size(max_bytes)} limit; "
                "later lines were discarded. The op keeps running."
            )
            size = _utf8_size(text)
            attempt.log_full = True
            events.record(
                session, op.job_id, "log_full", f"{op.key}: {text.removeprefix('[peergrid] ')}", attempt=attempt, now=now
            )
        session.add(
            LogLine(
                job_id=op.job_id, op_id=op.id, attempt_id=attempt.id, seq=r.seq, stream=stream, text=text, logged_at=now
            )
        )
        attempt.log_bytes += size
        stored += 1
        if attempt.log_full:
            break
    attempt.last_log_seq = fresh[-1].seq
    return LogsStored(stored, attempt.log_full)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", errors="replace"))


def _size(n: int) -> str:
    """A byte count as people write limits: 16 MB, 64 KB or 100 bytes."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def attempt_lines(session: Session, attempt: Attempt) -> list[tuple[str, str]]:
    return [
        (stream, text)
        for stream, text in session.execute(
            select(LogLine.stream, LogLine.text).where(LogLine.attempt_id == attempt.id).order_by(LogLine.seq)
        )
    ]


def finish_attempt(
    session: Session,
    node: Node,
    attempt_id: int,
    *,
    exit_code: int | None,
    error: str | None = None,
    now: datetime | None = None,
) -> Attempt:
    """Record how the attempt ended, retry or settle its op, and move the workflow on."""
    now = now or utcnow()
    attempt = held_attempt(session, node, attempt_id)
    if error:
        error = redact(error, job_masks(session, attempt.op.job_id))
    if attempt.op.result_rules:
        attempt.op.results = extract(attempt.op.result_rules, attempt_lines(session, attempt))
    succeeded = error is None and exit_code == 0
    attempt.exit_code = exit_code
    attempt.error = error if error else (None if succeeded else f"The container exited with code {exit_code}.")
    move(attempt, AttemptState.SUCCEEDED if succeeded else AttemptState.FAILED, now=now)
    ledger.bill_attempt(session, attempt)
    events.record(
        session, attempt.op.job, "exited",
        f"{attempt.op.key}: " + ("the container exited with code 0." if succeeded else attempt.error),
        attempt=attempt, now=now,
    )
    record_op_outcome(session, attempt.op, attempt, now=now)
    return attempt


# Attempts lost with their node do not use up an op's tries, but an op that loses this many is
# failed, so one that brings nodes down cannot go round forever.
MAX_LOST_ATTEMPTS = 3


def record_op_outcome(session: Session, op: Op, attempt: Attempt, *, now: datetime) -> None:
    """Settle an op after one of its attempts ended: success, another try, or failure."""
    op.exit_code = attempt.exit_code
    lost = sum(1 for a in op.attempts if a.state == AttemptState.LOST)
    tries = len(op.attempts) - lost
    if attempt.state == AttemptState.SUCCEEDED:
        op.error = None
        move(op, OpState.SUCCEEDED, now=now)
    elif attempt.state == AttemptState.LOST and lost < MAX_LOST_ATTEMPTS:
        move(op, OpState.QUEUED, now=now)
        events.record(session, op.job, "requeued", f"{op.key}: its node was lost; offering it again.", op=op, now=now)
        new_attempt(session, op, now=now)
    elif attempt.state != AttemptState.LOST and tries < op.max_attempts:
        move(op, OpState.QUEUED, now=now)
        events.record(
            session, op.job, "retrying",
            f"{op.key}: attempt {attempt.number} failed; {op.max_attempts - tries} more allowed.",
            op=op, now=now,
        )
        new_attempt(session, op, now=now)
    else:
        op.error = attempt.error
        move(op, OpState.FAILED, now=now)
    advance(session, op.job, now=now)


def lose_attempts(session: Session, node: Node, why: str, *, now: datetime | None = None) -> list[Attempt]:
    """Mark the attempts node holds as lost (never billed) and offer their ops again elsewhere."""
    now = now or utcnow()
    held = list(
        session.scalars(
            select(Attempt).where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD)).order_by(Attempt.id)
        )
    )
    for attempt in held:
        attempt.error = f"Lost: {why}"
        attempt.cost_note = "Not billed: lost with its node."
        move(attempt, AttemptState.LOST, now=now)
        events.record(session, attempt.op.job, "lost", f"{attempt.op.key}: {attempt.error}", attempt=attempt, now=now)
        record_op_outcome(session, attempt.op, attempt, now=now)
    return held


def expire_overdue(session: Session, *, grace_s: float, now: datetime | None = None) -> list[Attempt]:
    """Fail held attempts past their op's time limit plus grace: their node stopped reporting.

    The node enforces the limit itself; this catches nodes that vanished mid-run.
    """
    now = now or utcnow()
    expired = []
    held = session.scalars(
        select(Attempt).where(Attempt.state.in_(ATTEMPT_HELD)).order_by(Attempt.id).with_for_update(skip_locked=True)
    )
    for attempt in held:
        began = attempt.started_at or attempt.claimed_at
        op = attempt.op
        if began is None or (now - began).total_seconds() <= op.timeout_s + grace_s:
            continue
        node = attempt.node.name if attempt.node else "its node"
        attempt.error = f"Timed out: {node} did not report the op ending within its {op.timeout_s} s limit."
        attempt.cost_note = "Not billed: its node stopped reporting."
        move(attempt, AttemptState.FAILED, now=now)
        events.record(session, op.job, "timed_out", f"{op.key}: {attempt.error}", attempt=attempt, now=now)
        record_op_outcome(session, op, attempt, now=now)
        expired.append(attempt)
    return expired
