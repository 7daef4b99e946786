"""Services: ops that expose ports, what their readiness moves in their job, and how the ops of a
job that run on the same node reach them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.names import op_slug
from scheduler import events
from scheduler.endpoints import attempt_endpoints, endpoint_domain, endpoint_url, held_service_attempt, op_ready
from scheduler.models import Attempt, Endpoint, Op
from scheduler.orchestration import advance
from scheduler.states import ATTEMPT_HELD, utcnow


def readiness_changed(session: Session, op: Op, *, now: datetime | None = None) -> list[Attempt]:
    """Advance op's job after its readiness changed (an endpoint became healthy or forwarded, or
    stopped being so): ops waiting on it may start. A change is recorded on its held attempt
    (ready_at, and a "ready" event). Returns the attempts made, whose offers are staged on the
    session and published when it commits."""
    note_readiness(session, op, now=now)
    return advance(session, op.job, now=now)


def local_addresses(session: Session, attempt: Attempt, spec: dict[str, Any]) -> dict[str, Any]:
    """Spec with the endpoint URLs of the job's other services that attempt's node runs now written
    as their addresses on the job's network there (`http://<op id's slug>:<port>/`).

    An endpoint literal resolves to the URL at the gateway, which reaches the service from anywhere
    but a container on the service's own node when the gateway is served on that machine's
    loopback only (`<label>.localhost`, the local default): a container's loopback is its own. On
    the job network the service is one hop away and answers on its own port, whatever the
    gateway's domain. An op's own URL is left as it is: an op hands its own URL on to others.
    """
    rows = session.execute(
        select(Endpoint.label, Endpoint.port, Op.key)
        .join(Attempt, Attempt.id == Endpoint.attempt_id)
        .join(Op, Op.id == Endpoint.op_id)
        .where(
            Op.job_id == attempt.op.job_id,
            Op.id != attempt.op_id,
            Attempt.node_id == attempt.node_id,
            Attempt.state.in_(ATTEMPT_HELD),
            Endpoint.closed_at.is_(None),
        )
    ).all()
    if not rows:
        return spec
    domain = endpoint_domain(session)
    local = {endpoint_url(label, domain): f"http://{op_slug(key)}:{port}/" for label, port, key in rows}
    return _replace(spec, local)


def _replace(value: Any, local: dict[str, str]) -> Any:
    if isinstance(value, str):
        for url, address in local.items():
            value = value.replace(url, address)
        return value
    if isinstance(value, list):
        return [_replace(v, local) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, local) for k, v in value.items()}
    return value


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
