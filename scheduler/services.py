"""Services: ops that expose ports, and what their readiness moves in their job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from scheduler.models import Attempt, Op
from scheduler.orchestration import advance


def readiness_changed(session: Session, op: Op, *, now: datetime | None = None) -> list[Attempt]:
    """Advance op's job after its readiness changed (an endpoint became healthy or forwarded, or
    stopped being so): ops waiting on it may start. Returns the attempts made, whose offers are
    staged on the session and published when it commits."""
    return advance(session, op.job, now=now)
