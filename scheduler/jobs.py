"""Submitting jobs and reading them back, always on behalf of one person."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, selectinload

from scheduler import ledger
from scheduler.errors import (
    Conflict,
    InvalidDefinition,
    NoMarket,
    NotFound,
    PeergridError,
    PriorityRefused,
    Problem,
    QuotaExceeded,
)
from scheduler.jobdef import JobDefinition, read_definition
from scheduler.models import AccountKind, Attempt, Job, LogLine, Market, Op, User
from scheduler.orchestration import create_job
from scheduler.placement import PlannedOp, plan_op, plan_ops
from scheduler.priorities import PriorityBounds, check_priority
from scheduler.quotas import check_waiting_quota, waiting_quota_problem
from scheduler.secrets import missing_secrets
from scheduler.states import JobState

PAGE_SIZE = 25
# What an Idempotency-Key may be: what fits its column, in characters any HTTP header carries.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def submit_job(
    session: Session,
    owner: User,
    document: object,
    *,
    market_slug: str | None = None,
    default_timeout_s: int,
    max_ops: int | None = None,
    priority: int = 0,
    priorities: PriorityBounds = PriorityBounds(),
) -> Job:
    """Validate a job definition and store the job; nothing is stored when it is wrong.

    Raises:
        PriorityRefused: owner may not ask for this priority.
        InvalidDefinition: the definition has problems, all of them listed (more than max_ops ops is one).
        NoMarket: an op needs hardware no market serves.
        QuotaExceeded: owner's quota allows no more waiting jobs on one of its markets.
    """
    check_priority(owner, priority, priorities)
    definition = check_definition(session, owner, document, max_ops=max_ops)
    planned = plan_ops(session, definition, market_slug=market_slug, default_timeout_s=default_timeout_s)
    check_waiting_quota(session, owner, _markets(planned))
    # check_definition refused anything but an object
    return create_job(
        session, owner, cast(dict, document), definition, market_slug=market_slug, default_timeout_s=default_timeout_s,
        priority=priority, planned=planned,
    )


def _markets(planned: list[PlannedOp]) -> list[Market]:
    return list({p.market.id: p.market for p in planned}.values())


@dataclass(frozen=True)
class Submission:
    """What a submit with an Idempotency-Key came to: the job, and whether an earlier submit with
    the same key had made it."""

    job: Job
    repeated: bool = False


def submit_once(
    session: Session,
    owner: User,
    document: object,
    *,
    key: str,
    market_slug: str | None = None,
    default_timeout_s: int,
    max_ops: int | None = None,
    priority: int = 0,
    priorities: PriorityBounds = PriorityBounds(),
) -> Submission:
    """Submit a job at most once per key: a repeat of owner's request with the same key answers
    the job the first one made, however many run at once.

    Raises:
        PeergridError: the key is empty, too long or not printable ASCII.
        Conflict: owner used the key for a different request (definition, market or priority).
        PriorityRefused: owner may not ask for this priority.
        InvalidDefinition: the definition has problems, all of them listed.
        NoMarket: an op needs hardware no market serves.
        QuotaExceeded: owner's quota allows no more waiting jobs on one of its markets.
    """
    key = check_idempotency_key(key)
    digest = request_digest(document, market_slug, priority)
    earlier = _job_of_key(session, owner, key)
    if earlier is None:
        check_priority(owner, priority, priorities)
        definition = check_definition(session, owner, document, max_ops=max_ops)
        planned = plan_ops(session, definition, market_slug=market_slug, default_timeout_s=default_timeout_s)
        try:
            check_waiting_quota(session, owner, _markets(planned))
        except QuotaExceeded:
            # A concurrent submit with the key may have made its job while this one waited to count.
            earlier = _job_of_key(session, owner, key)
            if earlier is None:
                raise
    if earlier is None:
        try:
            job = create_job(
                session, owner, cast(dict, document), definition, market_slug=market_slug,
                default_timeout_s=default_timeout_s, idempotency_key=key, request_digest=digest,
                priority=priority, planned=planned,
            )
            return Submission(job)
        except IntegrityError:  # a concurrent submit with the key committed first
            earlier = _job_of_key(session, owner, key)
            if earlier is None:
                raise
    if earlier.request_digest != digest:
        raise Conflict(
            f"The Idempotency-Key {key!r} was used for a different request, which made job {earlier.id}; "
            "send a new key with a new job."
        )
    return Submission(earlier, repeated=True)


def check_idempotency_key(key: str) -> str:
    """key without the spaces around it.

    Raises:
        PeergridError: it is empty, too long or not printable ASCII.
    """
    key = key.strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise PeergridError("An Idempotency-Key is 1 to 255 printable ASCII characters, like a UUID.")
    return key


def request_digest(document: object, market_slug: str | None, priority: int = 0) -> str:
    """The SHA-256 of what a submit asks for, to tell a repeat from another request."""
    asked: dict = {"definition": document, "market": market_slug}
    if priority:  # absent at 0, so keys kept from before priorities keep their digests
        asked["priority"] = priority
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _job_of_key(session: Session, owner: User, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key))


def check_definition(
    session: Session, owner: User, document: object, *, max_ops: int | None = None, in_array: bool = False
) -> JobDefinition:
    """Read a definition as owner would submit it (in_array: as an array's): its own problems and
    any secret it names that owner does not have, all at once.

    Raises:
        InvalidDefinition: listing every problem.
    """
    definition, problems = _read_as_submitted(session, owner, document, max_ops=max_ops, in_array=in_array)
    if problems or definition is None:
        raise InvalidDefinition(problems)
    return definition


def _read_as_submitted(
    session: Session, owner: User, document: object, *, max_ops: int | None, in_array: bool = False
) -> tuple[JobDefinition | None, list[Problem]]:
    """A definition's well-formed part, and its problems with any secret it names that owner lacks."""
    definition, problems = read_definition(document, max_ops=max_ops, in_array=in_array)
    return definition, problems + missing_secrets(session, owner, document)


@dataclass(frozen=True)
class JobPlan:
    """What a submit of a definition would come to, found without storing or reserving anything."""

    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()
    ops: tuple[PlannedOp, ...] = ()
    available: int = 0
    # How many jobs of the definition the submit makes: an array's size, else 1.
    copies: int = 1

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def max_cost(self) -> int:
        return sum(op.max_cost for op in self.ops) * self.copies


def plan_job(
    session: Session,
    owner: User,
    document: object,
    *,
    market_slug: str | None = None,
    default_timeout_s: int,
    max_ops: int | None = None,
    priority: int = 0,
    priorities: PriorityBounds = PriorityBounds(),
    array_size: int | None = None,
) -> JobPlan:
    """Check a definition as submit_job would (or, with array_size, as an array of that many jobs),
    and plan it: each op's market and most cost, and whether owner has the credits and room in their
    quotas; every problem at once, and nothing stored."""
    in_array = array_size is not None
    definition, problems = _read_as_submitted(session, owner, document, max_ops=max_ops, in_array=in_array)
    try:
        check_priority(owner, priority, priorities)
    except PriorityRefused as e:
        problems.append(Problem("priority", str(e)))
    if definition is None:
        return JobPlan(problems=tuple(problems))
    planned: list[PlannedOp] = []
    markets = list(session.scalars(select(Market)))
    for op_def in definition.ops:  # the well-formed ones, so a wrong op hides no other's market
        try:
            planned.append(plan_op(
                markets, op_def, definition, market_slug=market_slug, default_timeout_s=default_timeout_s
            ))
        except NoMarket as e:
            problems.append(Problem(f"$.ops[{op_def.position}]", str(e)))
    available = ledger.balances(session, owner.id)[AccountKind.AVAILABLE.value]
    copies = array_size if in_array else 1
    needed = sum(op.max_cost for op in planned) * copies
    what = f"This array of {copies} jobs at their longest" if in_array else "This job at its longest"
    if not problems and needed > available:
        # as escrow would refuse it, in its words
        problems.append(Problem("$", str(ledger.InsufficientCredits(needed, available, what))))
    if not problems and (over := waiting_quota_problem(session, owner, _markets(planned), adding=copies)) is not None:
        problems.append(Problem("$", str(over)))
    return JobPlan(
        problems=tuple(problems), warnings=definition.warnings, ops=tuple(planned), available=available, copies=copies
    )


def job_for(session: Session, user: User, job_id: int) -> Job:
    """Return a job its owner (or an admin) may see.

    Raises:
        NotFound: no such job, or it is someone else's.
    """
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .options(selectinload(Job.ops).selectinload(Op.attempts).selectinload(Attempt.node))
    )
    if job is None or (job.owner_id != user.id and not user.is_admin):
        raise NotFound(f"There is no job {job_id}.")
    return job


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    page: int
    pages: int
    total: int


def list_jobs(
    session: Session, user: User, *, state: str | None = None, page: int = 1, with_op_keys: bool = True
) -> JobPage:
    """One page of the person's jobs, newest first; with_op_keys loads their ops' ids in one more query."""
    where = [Job.owner_id == user.id]
    if state:
        try:
            where.append(Job.state == JobState(state))
        except ValueError:
            raise PeergridError(
                f"Unknown state {state!r}: use one of {', '.join(s.value for s in JobState)}."
            ) from None
    # Counting ids alone lets the store answer from the (owner_id, id) index.
    total = session.scalar(select(func.count(Job.id)).where(*where)) or 0
    pages = max(1, -(-total // PAGE_SIZE))
    page = max(1, page)
    query = (
        select(Job)
        .where(*where)
        .options(defer(Job.definition))
        .order_by(Job.id.desc())
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    )
    if with_op_keys:
        query = query.options(selectinload(Job.ops).load_only(Op.job_id, Op.key, Op.position))
    return JobPage(jobs=list(session.scalars(query)), page=page, pages=pages, total=total)


def job_logs(
    session: Session, job: Job, *, op_key: str | None = None, after: int = 0, limit: int = 5000
) -> list[tuple[LogLine, str]]:
    """The job's log lines (or one op's) after the cursor, in order, each with its op's id."""
    query = (
        select(LogLine, Op.key)
        .join(Op, Op.id == LogLine.op_id)
        .where(LogLine.job_id == job.id, LogLine.id > after)
        .order_by(LogLine.id)
        .limit(limit)
    )
    if op_key is not None:
        if not any(op.key == op_key for op in job.ops):
            raise NotFound(f"Job {job.id} has no op {op_key!r}.")
        query = query.where(Op.key == op_key)
    return [(line, key) for line, key in session.execute(query)]
