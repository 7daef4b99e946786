"""Recording what happens to jobs, in sentences their owners can read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.models import Attempt, Job, JobEvent, Op
from scheduler.states import utcnow


def record(
    session: Session,
    job: Job | int,
    kind: str,
    message: str,
    *,
    op: Op | None = None,
    attempt: Attempt | None = None,
    now: datetime | None = None,
) -> JobEvent:
    event = JobEvent(
        job_id=job if isinstance(job, int) else job.id,
        op_id=op.id if op is not None else (attempt.op_id if attempt is not None else None),
        attempt_id=attempt.id if attempt is not None else None,
        kind=kind,
        message=message,
        created_at=now or utcnow(),
    )
    session.add(event)
    return event


def job_events(session: Session, job: Job, *, limit: int = 500) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id).limit(limit))
    )
