"""Services: ops that expose ports, and what their readiness moves in their job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from scheduler import events
from scheduler.endpoints import attempt_endpoints, held_service_attempt, op_ready
from scheduler.models import Attempt, Op
from scheduler.orchestration import advance
from scheduler.states import utcnow


def readiness_changed(session: Session, op: Op, *, now: datetime | None = None) -> list[Attempt]:
    """Advance op's job after its readiness changed (an endpoint became healthy or forwarded, or
    stopped being so): ops waiting on it may start. A change is recorded on its held attempt
    (ready_at, and a "ready" event). Returns the attempts made, whose offers are staged on the
    session and published when it commits."""
    note_readiness(session, op, now=now)
    return advance(session, op.job, now=now)


def note_readiness(session: Session, op: Op, *, now: datetime | None = None) -> bool | None:
    """Bring the held attempt's ready_at up to date with the op's readiness; record a "ready" event
    when it becomes ready. Returns the new readiness when it changed, else None."""
    attempt = held_service_attempt(session, op)
    if attempt is None:
        return None
    ready = op_ready(session, op)
    if ready == (attempt.ready_at is not None):
        return None
    if ready:
        attempt.ready_at = now or utcnow()
        ports = ", ".join(str(e.port) for e in attempt_endpoints(session, attempt))
        events.record(session, op.job, "ready",
                      f"{op.key} is ready: port{'s' if ',' in ports else ''} {ports} passed {'their' if ',' in ports else 'its'} "
                      "health checks and the gateway serves them.", attempt=attempt, now=attempt.ready_at)
    else:
        attempt.ready_at = None
    return ready
