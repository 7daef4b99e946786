"""What nodes report about the attempts they run: claim, start, log lines, finish.

The attempt id is the fencing token: a report about an attempt that is no longer the caller's
is refused with Conflict, whatever it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from protocol.gpus import gpu_shortfall
from protocol.messages import (
    LOG_STREAMS,
    ClaimAnswer,
    FinishedReport,
    InputRef,
    LogRecord,
    LogsAnswer,
    ReleaseReport,
    WorkOrder,
)
from protocol.services import EndpointRef
from scheduler import events
from scheduler.artifacts import job_artifacts
from scheduler.endpoints import attempt_endpoints, open_endpoints
from scheduler.errors import Conflict, NotFound, SecretMissing
from scheduler.models import Attempt, LogLine, Node
from scheduler.orchestration import advance, end_attempt, pinned_node_id
from scheduler.placing import hand_off
from scheduler.results import extract
from scheduler.secrets import job_masks, masks, op_secret_values, redact, reveal
from scheduler.services import local_addresses
from scheduler.states import (
    ATTEMPT_HELD,
    AttemptState,
    Ending,
    NodeState,
    OpState,
    can_move,
    move,
    utcnow,
)


@dataclass(frozen=True)
class LogLimits:
    """How much of an attempt's output the server keeps."""

    max_line_chars: int
    max_bytes: int


def claim_attempt(
    session: Session, node: Node, attempt_id: int, *, gpus: list[str] | None = None, now: datetime | None = None,
    all_private: bool = False,
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
        if pending.placed_node_id is not None and pending.placed_node_id != node.id:
            raise Conflict(f"Attempt {attempt_id} was placed on another node; this node is offered its own work.")
        if pending.op.spec.get("expose") and not node.serves_endpoints:
            raise Conflict(
                f"Node {node.name} runs containers without a network (--job-network none), so it cannot serve "
                f"the ports op {pending.op.key} exposes; a node with a job network takes it."
            )
        check_capacity(session, node, pending.op.market, gpus)
    if not can_move(AttemptState.QUEUED, AttemptState.CLAIMED):  # the table and this update must agree
        raise Conflict(f"Attempt {attempt_id} cannot be claimed: queued attempts may not move to claimed.")
    # A conditional update rather than move(): the WHERE clause is what makes the claim exclusive.
    result = session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.state == AttemptState.QUEUED)
        .values(state=AttemptState.CLAIMED, node_id=node.id, claimed_at=now, gpus=gpus,
                waiting=None, line_position=None, reserved_node_id=None, reserved_from=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        state = session.scalar(select(Attempt.state).where(Attempt.id == attempt_id))
        if state is None:
            raise NotFound(f"There is no attempt {attempt_id}.")
        raise Conflict(f"Attempt {attempt_id} is {state.value}, not waiting for a node.")
    attempt = session.get(Attempt, attempt_id, populate_existing=True)
    # Recorded at the claim, not the start, so the work order carries their labels and the node
    # can forward them as soon as the container runs; they are the node's as long as it holds it.
    open_endpoints(session, attempt, now=now, all_private=all_private)
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
        shortfall = gpu_shortfall(gpu, market, simulated=node.simulated)
        if shortfall:
            raise Conflict(f"GPU {uuid} ({gpu.name}) does not meet market {market.slug}'s requirements: {shortfall}.")


def claim_work(
    session: Session, node: Node, attempt_id: int, *, gpus: list[str] | None = None, now: datetime | None = None,
    all_private: bool = False,
) -> ClaimAnswer:
    """Claim an attempt for node and hand over what it needs to run it: its spec with the secret
    values it uses, its parents' outputs, and what to mask. When a secret it needs has gone since
    it was submitted, the claim stands and the attempt ends, refused, as if the node could not run it.

    Raises:
        NotFound, Conflict: as claim_attempt.
    """
    attempt = claim_attempt(session, node, attempt_id, gpus=gpus, now=now, all_private=all_private)
    op = attempt.op
    try:
        values = op_secret_values(session, op)
    except SecretMissing as e:
        end_attempt(session, attempt, Ending.REFUSED, error=str(e), now=now)
        return ClaimAnswer(order=None, error=str(e))
    keys = {o.id: o.key for o in op.job.ops}
    inputs = tuple(
        InputRef(op=keys[a.op_id], sha256=a.sha256, size=a.size_bytes)
        for a in {a.op_id: a for a in job_artifacts(session, op.job)}.values()
        if keys[a.op_id] in op.depends_on
    )
    # The only place secret values leave the store: to the node that won the claim.
    spec = reveal(op.spec, values)
    if node.serves_endpoints:
        spec = local_addresses(session, attempt, spec)
    return ClaimAnswer(
        order=WorkOrder(
            id=attempt.id,
            number=attempt.number,
            job_id=op.job_id,
            op=op.key,
            timeout_s=op.timeout_s,
            market=op.market.slug,
            gpus=tuple(attempt.gpus or ()),
            spec=spec,
            inputs=inputs,
            redact=tuple(masks(values.values())),
            endpoints=tuple(EndpointRef(label=e.label, port=e.port) for e in attempt_endpoints(session, attempt)),
        )
    )


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


def append_logs(
    session: Session,
    node: Node,
    attempt_id: int,
    records: list[LogRecord] | tuple[LogRecord, ...],
    *,
    limits: LogLimits,
    now: datetime | None = None,
) -> LogsAnswer:
    """Store log lines in sequence order, ignoring any already stored, with the job owner's
    secrets masked, until the attempt's log holds limits.max_bytes; then store one line saying so
    and discard the rest.
    """
    now = now or utcnow()
    max_line_chars, max_bytes = limits.max_line_chars, limits.max_bytes
    attempt = held_attempt(session, node, attempt_id)
    fresh = sorted((r for r in records if r.seq > attempt.last_log_seq), key=lambda r: r.seq)
    if not fresh or attempt.log_full:
        return LogsAnswer(0, attempt.log_full)
    op = attempt.op
    # The node masks secrets already; this catches a node that did not.
    masked = job_masks(session, op.job_id)
    stored = 0
    for r in fresh:
        stream = r.stream if r.stream in LOG_STREAMS else "stdout"
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
    return LogsAnswer(stored, attempt.log_full)


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
    """Record how the attempt ended on its node, read its results, and end it."""
    now = now or utcnow()
    attempt = held_attempt(session, node, attempt_id)
    if error:
        error = redact(error, job_masks(session, attempt.op.job_id))
    if attempt.op.result_rules:
        attempt.op.results = extract(attempt.op.result_rules, attempt_lines(session, attempt))
    ending = Ending.COULD_NOT_RUN if exit_code is None else Ending.EXITED
    end_attempt(session, attempt, ending, exit_code=exit_code, error=error, now=now)
    return attempt


def report_finished(
    session: Session, node: Node, attempt_id: int, report: FinishedReport, *, limits: LogLimits,
    now: datetime | None = None,
) -> Attempt:
    """A node's finished report: its last log lines, then how the attempt ended."""
    if report.lines:
        append_logs(session, node, attempt_id, report.lines, limits=limits, now=now)
    return finish_attempt(session, node, attempt_id, exit_code=report.exit_code, error=report.error, now=now)


def next_work(
    session: Session, node: Node, *, half_life_s: float, all_private: bool = False, now: datetime | None = None
) -> list[WorkOrder]:
    """Place on node the best-ranked waiting work that fits what it has free now, and claim it for
    the node at once: the answer to a finished report carries it, so freed GPUs do not wait for a
    pass and an offer. What cannot be claimed after all (a secret gone) is left out."""
    orders = []
    for attempt_id in hand_off(session, node, half_life_s=half_life_s, now=now):
        placed = session.get(Attempt, attempt_id)
        try:
            answer = claim_work(session, node, attempt_id, gpus=list(placed.placed_gpus or []), now=now,
                                all_private=all_private)
        except Conflict:
            continue
        if answer.order is not None:
            orders.append(answer.order)
    return orders


def release_attempt(
    session: Session, node: Node, attempt_id: int, report: ReleaseReport, *, limits: LogLimits,
    now: datetime | None = None,
) -> Attempt:
    """A node giving an attempt back unfinished because its worker is stopping: store its last log
    lines, then end it released, which bills nothing, uses up no try and offers the op again at once.

    Raises:
        NotFound: no such attempt.
        Conflict: the attempt is not this node's, or is over.
    """
    now = now or utcnow()
    if report.lines:
        append_logs(session, node, attempt_id, report.lines, limits=limits, now=now)
    attempt = held_attempt(session, node, attempt_id)
    reason = redact(report.reason, job_masks(session, attempt.op.job_id))
    end_attempt(
        session, attempt, Ending.RELEASED, error=f"Unfinished, given back by node {node.name}: {reason}", now=now
    )
    return attempt


def lose_attempts(session: Session, node: Node, why: str, *, now: datetime | None = None) -> list[Attempt]:
    """End the attempts node holds as lost (never billed), so their ops are offered again elsewhere."""
    now = now or utcnow()
    held = list(
        session.scalars(
            select(Attempt).where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD)).order_by(Attempt.id)
        )
    )
    for attempt in held:
        end_attempt(session, attempt, Ending.LOST, error=f"Lost: {why}", now=now)
    return held


def lose_forgotten(session: Session, node: Node, attempt_ids: list[int], *, now: datetime | None = None) -> list[Attempt]:
    """End as lost the attempts of attempt_ids that node holds but no longer accounts for: it
    neither runs them nor keeps their outcome to send (a report of their end went missing), so
    nothing more will come of them on that node."""
    now = now or utcnow()
    forgotten = list(
        session.scalars(
            select(Attempt)
            .where(Attempt.id.in_(attempt_ids), Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD))
            .order_by(Attempt.id)
            .with_for_update()
        )
    )
    for attempt in forgotten:
        why = f"Lost: node {node.name} no longer runs it and has no outcome of it to report."
        end_attempt(session, attempt, Ending.LOST, error=why, now=now)
    return forgotten


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
        why = f"Timed out: {node} did not report the op ending within its {op.timeout_s} s limit."
        end_attempt(session, attempt, Ending.TIMED_OUT, error=why, now=now)
        expired.append(attempt)
    return expired
