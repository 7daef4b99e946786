"""Turning a job definition into ops, deciding which ops may run, and deriving the job's state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from scheduler import offers
from scheduler.jobdef import JobDefinition, OpDefinition
from scheduler.markets import choose_market, requirements_for
from scheduler.models import Attempt, Job, Op, User
from scheduler.states import (
    ATTEMPT_FINISHED,
    JOB_FINISHED,
    OP_FINISHED,
    AttemptState,
    JobState,
    OpState,
    move,
    utcnow,
)

# Container spec fields handed to the node that runs an op.
SPEC_FIELDS = ("image", "cmd", "entrypoint", "env", "work_dir", "output", "volumes", "expose")


def create_job(
    session: Session,
    owner: User,
    document: dict,
    definition: JobDefinition,
    *,
    market_slug: str | None = None,
    default_timeout_s: int,
    now: datetime | None = None,
) -> Job:
    """Store a job and its ops, and offer the ops that can start now.

    Raises:
        NoMarket: an op needs hardware no market serves; nothing is stored.
    """
    now = now or utcnow()
    placed = []
    for op_def in definition.ops:
        need = requirements_for(op_def, definition)
        market = choose_market(session, need, op_def.args.get("market") or market_slug)
        placed.append((op_def, market))

    job = Job(owner_id=owner.id, definition=document, state=JobState.QUEUED, created_at=now)
    session.add(job)
    for op_def, market in placed:
        timeout = min(op_def.timeout_s or default_timeout_s, market.max_timeout_s)
        job.ops.append(
            Op(
                key=op_def.key,
                position=op_def.position,
                type=op_def.type,
                group=op_def.group,
                depends_on=list(_effective_dependencies(op_def, definition)),
                spec=_spec(op_def),
                market=market,
                state=OpState.PENDING,
                timeout_s=timeout,
                max_attempts=op_def.max_attempts,
            )
        )
    session.flush()
    job.max_cost = max_cost(job)
    advance(session, job, now=now)
    return job


def _spec(op_def: OpDefinition) -> dict:
    spec = {k: op_def.args[k] for k in SPEC_FIELDS if k in op_def.args}
    spec["gpu_count"] = op_def.gpu_count
    return spec


def _effective_dependencies(op_def: OpDefinition, definition: JobDefinition) -> tuple[str, ...]:
    """depends_on, plus every op of the groups that appear before this op's group."""
    deps = list(op_def.depends_on)
    if op_def.group is not None:
        order: list[str] = []
        for other in definition.ops:
            if other.group is not None and other.group not in order:
                order.append(other.group)
        earlier = set(order[: order.index(op_def.group)])
        deps += [o.key for o in definition.ops if o.group in earlier and o.key not in deps]
    return tuple(deps)


def advance(session: Session, job: Job, *, now: datetime | None = None) -> list[Attempt]:
    """Offer every op whose dependencies succeeded, skip those that can no longer run, and
    bring the job's state up to date. Return the attempts created."""
    now = now or utcnow()
    if job.state in JOB_FINISHED:
        return []
    by_key = {op.key: op for op in job.ops}
    created: list[Attempt] = []
    changed = True
    while changed:  # skipping one op can make its dependents skippable in turn
        changed = False
        for op in job.ops:
            if op.state != OpState.PENDING:
                continue
            deps = [by_key[k] for k in op.depends_on if k in by_key]
            if any(d.state in (OpState.FAILED, OpState.SKIPPED, OpState.CANCELLED) for d in deps):
                move(op, OpState.SKIPPED, now=now)
                op.error = "Skipped: an op it depends on did not succeed."
                changed = True
            elif all(d.state == OpState.SUCCEEDED for d in deps):
                move(op, OpState.QUEUED, now=now)
                created.append(new_attempt(session, op, now=now))
    settle_job_state(job, now=now)
    return created


def new_attempt(session: Session, op: Op, *, now: datetime | None = None) -> Attempt:
    """Create the op's next attempt and stage its offer for after the commit."""
    attempt = Attempt(op=op, number=len(op.attempts) + 1, created_at=now or utcnow())
    session.add(attempt)
    session.flush()
    offers.stage(session, attempt, now=now)
    return attempt


def settle_job_state(job: Job, *, now: datetime | None = None) -> None:
    """Derive the job's state from its ops'."""
    if job.state in JOB_FINISHED:
        return
    states = [op.state for op in job.ops]
    if all(s in OP_FINISHED for s in states):
        final = JobState.SUCCEEDED if all(s == OpState.SUCCEEDED for s in states) else JobState.FAILED
        move(job, final, now=now)
    elif job.state == JobState.QUEUED and any(
        s in (OpState.RUNNING, OpState.SUCCEEDED, OpState.FAILED) for s in states
    ):
        move(job, JobState.RUNNING, now=now)


def cancel_job(session: Session, job: Job, *, now: datetime | None = None) -> None:
    """Cancel every unfinished op and attempt of job; nodes learn of it on their next report."""
    now = now or utcnow()
    if job.state in JOB_FINISHED:
        return
    for op in job.ops:
        if op.state in OP_FINISHED:
            continue
        for attempt in op.attempts:
            if attempt.state not in ATTEMPT_FINISHED:
                move(attempt, AttemptState.CANCELLED, now=now)
                attempt.error = "Cancelled by its owner."
        move(op, OpState.CANCELLED, now=now)
        op.error = "Cancelled by its owner."
    move(job, JobState.CANCELLED, now=now)


def max_cost(job: Job) -> int:
    """The most a job can cost: for each op, price × GPUs (or one core) × timeout × tries."""
    return sum(
        op.market.price_per_second * max(1, op.spec.get("gpu_count", 0)) * op.timeout_s * op.max_attempts
        for op in job.ops
    )
