"""Submitting jobs and reading them back, always on behalf of one person."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, selectinload

from scheduler.errors import InvalidDefinition, NotFound, PeergridError
from scheduler.jobdef import JobDefinition, parse_definition
from scheduler.models import Attempt, Job, LogLine, Op, User
from scheduler.orchestration import create_job
from scheduler.secrets import missing_secrets
from scheduler.states import JobState

PAGE_SIZE = 25


def submit_job(
    session: Session, owner: User, document: object, *, market_slug: str | None = None, default_timeout_s: int
) -> Job:
    """Validate a job definition and store the job; nothing is stored when it is wrong.

    Raises:
        InvalidDefinition: the definition has problems, all of them listed.
        NoMarket: an op needs hardware no market serves.
    """
    definition = check_definition(session, owner, document)
    # check_definition refused anything but an object
    return create_job(
        session, owner, cast(dict, document), definition, market_slug=market_slug, default_timeout_s=default_timeout_s
    )


def check_definition(session: Session, owner: User, document: object) -> JobDefinition:
    """Read a definition as owner would submit it: its own problems and any secret it names that
    owner does not have, all at once.

    Raises:
        InvalidDefinition: listing every problem.
    """
    try:
        definition = parse_definition(document)
        problems = []
    except InvalidDefinition as e:
        definition, problems = None, list(e.problems)
    problems += missing_secrets(session, owner, document)
    if problems or definition is None:
        raise InvalidDefinition(problems)
    return definition


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
