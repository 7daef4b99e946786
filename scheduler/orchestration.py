"""Workflows: turning a job definition into ops, deciding which ops may run, ending attempts and
what follows from each end, and deriving the job's state."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from datetime import datetime
from typing import Callable

from sqlalchemy.orm import Session

from protocol.names import op_slug
from scheduler import events, ledger, placing
from scheduler.endpoints import any_node_serves_endpoints, close_endpoints, op_endpoint_url, op_ready
from scheduler.errors import Conflict, PeergridError
from scheduler.jobdef import CREATE_VOLUME, JobDefinition, OpDefinition, group_ranks
from scheduler.literals import Scope, UnresolvedLiteral, has_literals, resolve_args
from scheduler.models import Attempt, Job, Op, User
from scheduler.ordering import DEFAULT_HALF_LIFE_S, FAIR_SHARE_HALF_LIFE, record_use
from scheduler.placement import PlannedOp, most_cost, plan_ops
from scheduler.references import LITERAL
from scheduler.states import (
    ATTEMPT_FINISHED,
    ATTEMPT_HELD,
    JOB_FINISHED,
    OP_FINE,
    OP_FINISHED,
    AttemptState,
    Ending,
    JobState,
    OpState,
    move,
    utcnow,
)

# Container spec fields handed to the node that runs an op.
SPEC_FIELDS = (
    "image", "cmd", "entrypoint", "env", "work_dir", "output", "volumes", "expose", "private", "aliases",
    "authentication",
    "restart_policy",  # the worker restarts the container in place as it says
)


def create_job(
    session: Session,
    owner: User,
    document: dict,
    definition: JobDefinition,
    *,
    market_slug: str | None = None,
    default_timeout_s: int,
    idempotency_key: str | None = None,
    request_digest: str | None = None,
    priority: int = 0,
    planned: list[PlannedOp] | None = None,
    now: datetime | None = None,
) -> Job:
    """Store a job and its ops, and offer the ops that can start now; planned, when given, is
    plan_ops' answer for the definition, already found by the caller.

    Raises:
        NoMarket: an op needs hardware no market serves; nothing is stored.
        IntegrityError: owner has a job with this idempotency_key (scheduler.jobs.submit_once).
    """
    now = now or utcnow()
    placed = planned if planned is not None else plan_ops(
        session, definition, market_slug=market_slug, default_timeout_s=default_timeout_s
    )

    creators = {op.args.get("name"): op.key for op in definition.ops if op.type == CREATE_VOLUME}
    job = Job(
        owner_id=owner.id, definition=document, state=JobState.QUEUED, created_at=now,
        idempotency_key=idempotency_key, request_digest=request_digest,
        priority=priority,
    )
    if idempotency_key is None:
        session.add(job)
    else:
        # The key is claimed by the job's row, the transaction's first write, in a savepoint of its
        # own: a concurrent submit with the key waits for it there (SQLite's write lock, PostgreSQL's
        # unique index) and fails with nothing else written, its transaction still usable.
        with session.begin_nested():
            session.add(job)
    for planned in placed:
        job.ops.append(Op(**op_columns(planned, creators), market=planned.market, attempts=[]))
    job.max_cost = max_cost(job)
    session.flush()
    ledger.escrow(session, job, job.max_cost, key=f"escrow:job:{job.id}", what="This job at its longest")
    events.record(
        session, job, "submitted",
        f"Submitted with {len(job.ops)} op(s); {ledger.credits(job.max_cost)} credits reserved for its longest run.",
        now=now,
    )
    advance(session, job, now=now)
    return job


def op_columns(planned: PlannedOp, creators: dict[str, str]) -> dict:
    """An op's columns as planned, but its market's (create_job; scheduler.arrays stores many at once).

    creators maps each volume's name to the id of the op that makes it.
    """
    op_def = planned.definition
    volume_creators = [creators[v["name"]] for v in op_def.args.get("volumes") or [] if v["name"] in creators]
    return dict(
        key=op_def.key,
        position=op_def.position,
        type=op_def.type,
        group=op_def.group,
        depends_on=list(dict.fromkeys([*op_def.depends_on, *volume_creators])),
        stop_if_dependent_stops=op_def.stop_if_dependent_stops,
        result_rules={name: rule.as_dict() for name, rule in op_def.results.items()},
        spec=_spec(op_def),
        exposes=bool(op_def.args.get("expose")),
        state=OpState.PENDING,
        timeout_s=planned.timeout_s,
        max_attempts=op_def.max_attempts,
    )


def _spec(op_def: OpDefinition) -> dict:
    if op_def.type == CREATE_VOLUME:
        return {"create_volume": op_def.args["name"], "gpu_count": 0}
    spec = {k: op_def.args[k] for k in SPEC_FIELDS if k in op_def.args}
    spec["gpu_count"] = op_def.gpu_count
    return spec


def _started(op: Op) -> bool:
    return op.started_at is not None


def is_service(op: Op) -> bool:
    """Whether op is a service: it exposes ports, so it runs until stopped rather than to an end."""
    return bool(op.spec.get("expose"))


def _readiness(op: Op, by_key: dict[str, Op], serving: Callable[[Op], bool]) -> tuple[bool, str | None]:
    """Whether a pending op whose group's turn has come can be offered now, or why it never will
    (the second value). What it depends on must have succeeded, or be a service that is serving
    (ready: every endpoint of it is up), since a service does not end of itself."""
    deps = [by_key[k] for k in op.depends_on if k in by_key]
    if op.stop_if_dependent_stops:
        # It serves alongside what it depends on: it starts once they have started.
        dead = next((d for d in deps if d.state in OP_FINISHED and not _started(d)), None)
        if dead is not None:
            return False, f"{dead.key!r}, which it depends on, ended without starting."
        return all(_started(d) for d in deps), None
    failed = next((d for d in deps if d.state in OP_FINISHED and d.state not in OP_FINE), None)
    if failed is not None:
        return False, f"{failed.key!r}, which it depends on, did not succeed ({failed.state.value})."
    return all(d.state in OP_FINE or serving(d) for d in deps), None


def _results_read(ops: list[Op]) -> set[str]:
    """The ops whose results a pending op's literals read: those must end before it starts."""
    read = set()
    for op in ops:
        if op.state == OpState.PENDING:
            for name in LITERAL.findall(json.dumps(op.spec)):
                parts = name.split(".")
                if len(parts) == 4 and parts[0] == "ops" and parts[2] == "results":
                    read.add(parts[1])
    return read


def _serving(session: Session, ops: list[Op]) -> Callable[[Op], bool]:
    """A test of whether an op is a service that serves now (running and ready), asked of the store
    once per op; a service whose results a pending op reads counts as serving only once it ends."""
    services = [op for op in ops if is_service(op)]
    read = _results_read(ops) if services else set()
    known: dict[str, bool] = {}

    def serving(op: Op) -> bool:
        if op.key not in known:
            known[op.key] = (
                op.key not in read and op.state == OpState.RUNNING and is_service(op) and op_ready(session, op)
            )
        return known[op.key]

    return serving


def advance(session: Session, job: Job, *, now: datetime | None = None) -> list[Attempt]:
    """Offer every op whose turn has come, skip those that can no longer run, stop those whose
    reason to run has ended, and bring the job's state up to date. Return the attempts created."""
    now = now or utcnow()
    if job.state in JOB_FINISHED:
        return []
    ops = job.ops
    by_key = {op.key: op for op in ops}
    # Groups run in order of first appearance: an op's turn comes once every op of the groups
    # before its own has ended, or is a service that serves (it would never end of itself). `turn`
    # is the first group with an op still to end.
    serving = _serving(session, ops)
    rank = group_ranks((op.key, op.group) for op in ops)
    groups = max(rank.values(), default=-1) + 1
    unfinished = [0] * groups
    settled = {op.key for op in ops if op.state in OP_FINISHED or serving(op)}
    members: list[list[Op]] = [[] for _ in range(groups)]
    dependents: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        members[rank[op.key]].append(op)
        unfinished[rank[op.key]] += op.key not in settled
        for key in op.depends_on:
            dependents[key].append(op)
    turn = next((r for r in range(groups) if unfinished[r]), groups)

    # Every op is looked at once, in order; after that only an op something it waits on has just
    # changed, so a change that decides a chain of others costs the length of the chain, once.
    todo = deque(ops)
    waiting = {op.key for op in ops}

    def look_again(others: list[Op]) -> None:
        for other in others:
            if other.key not in waiting:
                waiting.add(other.key)
                todo.append(other)

    queued: list[Op] = []
    scope: Scope | None = None  # what literals read; it does not change while advancing
    while todo:
        op = todo.popleft()
        waiting.discard(op.key)
        before = op.state
        if op.state == OpState.PENDING and rank[op.key] == turn:
            ready, never = _readiness(op, by_key, serving)
            if never:
                move(op, OpState.SKIPPED, now=now)
                op.error = f"Skipped: {never}"
                events.record(session, job, "skipped", f"{op.key}: {op.error}", op=op, now=now)
            elif ready:
                if has_literals(op.spec):
                    scope = scope or _scope(session, job)
                    resolved = _resolve(session, job, op, scope, now=now)
                else:
                    resolved = True
                if resolved:
                    move(op, OpState.QUEUED, now=now)
                    queued.append(op)
        elif op.stop_if_dependent_stops and op.state in (OpState.QUEUED, OpState.RUNNING):
            ended = next((by_key[k] for k in op.depends_on if by_key[k].state in OP_FINISHED), None)
            if ended is not None:
                stop_op(session, op, f"{ended.key!r}, which it depends on, ended ({ended.state.value}).", now=now)
        if op.state == before:
            continue
        look_again(dependents.get(op.key, []))
        if op.state in OP_FINISHED and op.key not in settled:
            settled.add(op.key)
            unfinished[rank[op.key]] -= 1
            if rank[op.key] == turn and not unfinished[turn]:
                while turn < groups and not unfinished[turn]:
                    turn += 1
                if turn < groups:
                    look_again(members[turn])
    # Their attempts are made together, in one write; one stopped meanwhile is not offered.
    created = new_attempts(session, [op for op in queued if op.state == OpState.QUEUED], now=now)
    settle_job_state(session, job, now=now)
    return created


def _scope(session: Session, job: Job) -> Scope:
    """What the literals of job's ops can read now."""
    definition = job.definition
    by_key = {o.key: o for o in job.ops}
    return Scope(
        job_id=job.id,
        results={o.key: o.results for o in job.ops if o.results is not None},
        # The name each op has on its job network (worker.networks gives its container that alias).
        hosts={o.key: op_slug(o.key) for o in job.ops},
        endpoints=lambda key, port: op_endpoint_url(session, by_key[key], port),
        variables=((definition.get("global") or {}).get("variables") or {}),
        version=str(definition.get("version", "0.1")),
    )


def _resolve(session: Session, job: Job, op: Op, scope: Scope, *, now: datetime) -> bool:
    """Resolve the literals in op's spec from what finished before it; fail the op if one has no value."""
    try:
        op.spec = resolve_args(op.spec, scope)
    except UnresolvedLiteral as e:
        move(op, OpState.FAILED, now=now)
        op.error = str(e)
        events.record(session, job, "failed", f"{op.key}: {op.error}", op=op, now=now)
        return False
    events.record(session, job, "resolved", f"{op.key}: literals resolved.", op=op, now=now)
    return True


def pinned_node_id(op: Op) -> int | None:
    """The node an op must run on: where the volumes it uses were made."""
    names = {v.get("name") for v in op.spec.get("volumes") or [] if isinstance(v, dict)}
    if not names:
        return None
    for other in op.job.ops:
        if other.spec.get("create_volume") in names:
            done = next((a for a in reversed(other.attempts) if a.state == AttemptState.SUCCEEDED), None)
            if done is not None:
                return done.node_id
    return None


def new_attempt(session: Session, op: Op, *, now: datetime | None = None) -> Attempt:
    """Create the op's next attempt, to be placed by the next pass."""
    return new_attempts(session, [op], now=now)[0]


def new_attempts(session: Session, ops: list[Op], *, now: datetime | None = None) -> list[Attempt]:
    """Create each op's next attempt, written in one flush, and ask for a placement pass after the commit."""
    if not ops:
        return []
    now = now or utcnow()
    with session.no_autoflush:  # reading one op's attempts must not flush the attempt just made for another
        attempts = [
            Attempt(op=op, number=len(op.attempts) + 1, created_at=now, offered_at=now, pinned_node_id=pinned_node_id(op))
            for op in ops
        ]
    session.add_all(attempts)
    session.flush()
    placing.want_pass(session)
    servable: bool | None = None  # whether any node can serve endpoints now, asked once
    for attempt in attempts:
        op = attempt.op
        events.record(
            session, op.job, "offered",
            f"{op.key}: attempt {attempt.number} of {op.max_attempts} offered on market {op.market.slug}.",
            attempt=attempt, now=now,
        )
        if is_service(op):
            servable = any_node_serves_endpoints(session) if servable is None else servable
            if not servable:
                events.record(
                    session, op.job, "waiting",
                    f"{op.key}: no node up now can serve the ports it exposes (each runs its containers without "
                    "a network, --job-network none); it waits for one that can.",
                    attempt=attempt, now=now,
                )
    return attempts


# Attempts lost with their node do not use up an op's tries, but an op that loses this many is
# failed, so one that brings nodes down cannot go round forever.
MAX_LOST_ATTEMPTS = 3

# Why an ending is not billed, where it is not; every other ending is billed for the time the
# server saw the container run (none, if it never started).
_NOT_BILLED = {
    Ending.LOST: "Not billed: lost with its node.",
    Ending.TIMED_OUT: "Not billed: its node stopped reporting.",
    Ending.REFUSED: "Not billed: it was never handed to its node.",
    Ending.RELEASED: "Not billed: its node gave it back unfinished.",
}
# Endings decided for the op as a whole, whose caller then ends the op (cancel_job, stop_op).
_OP_WIDE = frozenset({Ending.CANCELLED, Ending.STOPPED})


def end_attempt(
    session: Session,
    attempt: Attempt,
    ending: Ending,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    """End an attempt, however it ended: move its state, bill it or note why not, record the
    event, and settle its op (success, another try, or failure) unless the op itself is ending.

    Raises:
        IllegalTransition: the attempt had ended already.
    """
    now = now or utcnow()
    op = attempt.op
    held = attempt.state in ATTEMPT_HELD
    succeeded = ending == Ending.EXITED and exit_code == 0 and not error
    if ending in _OP_WIDE:
        state = (AttemptState.STOPPED if ending == Ending.STOPPED else AttemptState.CANCELLED) if held else AttemptState.CANCELLED
    elif ending == Ending.LOST:
        state = AttemptState.LOST
    elif ending == Ending.RELEASED:
        state = AttemptState.RELEASED
    else:
        state = AttemptState.SUCCEEDED if succeeded else AttemptState.FAILED
    attempt.exit_code = exit_code
    if not error and not succeeded and ending == Ending.EXITED:
        error = f"The container exited with code {exit_code}."
    attempt.error = error
    move(attempt, state, now=now)
    close_endpoints(session, attempt, now=now)
    if held:
        _record_use(session, attempt, now)
        placing.freed(session)  # what it held is free for others
    if ending in _NOT_BILLED:
        attempt.cost_note = _NOT_BILLED[ending]
    elif held:
        ledger.bill_attempt(session, attempt, end=now)
    else:
        attempt.cost_note = "Not billed: the container never started."
    if ending in _OP_WIDE:
        if held:
            events.record(
                session, op.job, "container_stopped", f"{op.key}: its container was stopped. {error or ''}".strip(),
                attempt=attempt, now=now,
            )
        return
    kind = {
        Ending.LOST: "lost", Ending.TIMED_OUT: "timed_out", Ending.REFUSED: "refused", Ending.RELEASED: "given_back",
    }.get(ending, "exited")
    message = "the container exited with code 0." if succeeded else attempt.error
    events.record(session, op.job, kind, f"{op.key}: {message}", attempt=attempt, now=now)
    _settle_op(session, op, attempt, now=now)


def _record_use(session: Session, attempt: Attempt, now: datetime) -> None:
    """Count the GPU time (or CPU-slot time) an attempt held toward its owner's fair share, billed or not."""
    if attempt.started_at is None:
        return
    held_ms = max(0, int((now - attempt.started_at).total_seconds() * 1000))
    units = max(1, len(attempt.gpus or []))
    record_use(session, attempt.op.job.owner_id, held_ms * units,
               half_life_s=session.info.get(FAIR_SHARE_HALF_LIFE, DEFAULT_HALF_LIFE_S), now=now)


def _settle_op(session: Session, op: Op, attempt: Attempt, *, now: datetime) -> None:
    """Settle an op after one of its attempts ended: success, another try, or failure."""
    op.exit_code = attempt.exit_code
    lost = sum(1 for a in op.attempts if a.state == AttemptState.LOST)
    released = sum(1 for a in op.attempts if a.state == AttemptState.RELEASED)
    tries = len(op.attempts) - lost - released
    if attempt.state == AttemptState.SUCCEEDED:
        op.error = None
        move(op, OpState.SUCCEEDED, now=now)
    elif attempt.state == AttemptState.RELEASED:
        # Its provider stopped the worker cleanly: no fault of the op's, so no count stops it.
        move(op, OpState.QUEUED, now=now)
        events.record(session, op.job, "requeued", f"{op.key}: its node gave it back; offering it again.", op=op, now=now)
        new_attempt(session, op, now=now)
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


def stop_op(session: Session, op: Op, why: str, *, now: datetime) -> None:
    """Stop an op that has served its purpose: its attempts end, its node stops the container."""
    for attempt in op.attempts:
        if attempt.state not in ATTEMPT_FINISHED:
            end_attempt(session, attempt, Ending.STOPPED, error=f"Stopped: {why}", now=now)
    move(op, OpState.STOPPED, now=now)
    op.error = f"Stopped: {why}"
    events.record(session, op.job, "stopped", f"{op.key}: {op.error}", op=op, now=now)


def settle_job_state(session: Session, job: Job, *, now: datetime | None = None) -> None:
    """Derive the job's state from its ops'."""
    if job.state in JOB_FINISHED:
        return
    states = [op.state for op in job.ops]
    if all(s in OP_FINISHED for s in states):
        final = JobState.SUCCEEDED if all(s in OP_FINE for s in states) else JobState.FAILED
        move(job, final, now=now)
        returned = ledger.release(session, job)
        if returned:
            events.record(session, job, "released", f"{ledger.credits(returned)} unused credits returned.", now=now)
        failed = [op.key for op in job.ops if op.state not in OP_FINE]
        why = "every op succeeded" if final == JobState.SUCCEEDED else f"not every op succeeded: {', '.join(failed)}"
        events.record(session, job, final.value, f"The job {final.value}: {why}.", now=now)
    elif job.state == JobState.QUEUED and any(
        s in (OpState.RUNNING, OpState.SUCCEEDED, OpState.FAILED) for s in states
    ):
        move(job, JobState.RUNNING, now=now)


def cancel_job(session: Session, job: Job, *, by: str = "its owner", now: datetime | None = None) -> None:
    """Cancel every unfinished op and attempt of job; nodes learn of it on their next report."""
    now = now or utcnow()
    if job.state in JOB_FINISHED:
        return
    events.record(session, job, "cancelled", f"Cancelled by {by}.", now=now)
    for op in job.ops:
        if op.state in OP_FINISHED:
            continue
        for attempt in op.attempts:
            if attempt.state not in ATTEMPT_FINISHED:
                end_attempt(session, attempt, Ending.CANCELLED, error=f"Cancelled by {by}.", now=now)
        move(op, OpState.CANCELLED, now=now)
        op.error = f"Cancelled by {by}."
    move(job, JobState.CANCELLED, now=now)
    returned = ledger.release(session, job)
    if returned:
        events.record(session, job, "released", f"{ledger.credits(returned)} unused credits returned.", now=now)


def max_cost(job: Job) -> int:
    """The most a job can cost: each op's every try running its whole time limit."""
    return sum(most_cost(op.market, timeout_s=op.timeout_s, tries=op.max_attempts) for op in job.ops)


def extend_job(session: Session, job: Job, seconds: int, *, now: datetime | None = None) -> int:
    """Give every unfinished op of job more time, up to its market's maximum; return the op
    timeout's largest increase. Nodes learn the new limits on their next heartbeat."""
    now = now or utcnow()
    if job.state in JOB_FINISHED:
        raise Conflict(f"Job {job.id} has ended ({job.state.value}); there is nothing to extend.")
    if seconds <= 0:
        raise PeergridError("Extend by a positive number of seconds.")
    gained = 0
    for op in job.ops:
        if op.state in OP_FINISHED:
            continue
        new = min(op.timeout_s + seconds, op.market.max_timeout_s)
        gained = max(gained, new - op.timeout_s)
        op.timeout_s = new
    if gained == 0:
        raise Conflict(f"Job {job.id}'s ops are already at their market's longest allowed time.")
    before = job.max_cost
    job.max_cost = max_cost(job)
    ledger.escrow(
        session, job, job.max_cost - before, key=f"escrow:job:{job.id}:{job.max_cost}", what=f"{gained} more seconds"
    )
    capped = " (capped by the market's maximum)" if gained < seconds else ""
    events.record(session, job, "extended", f"Time limits extended by {gained} s{capped}.", now=now)
    return gained
