"""Service health: what a node reports of its service attempts' health checks and in-place
restarts, and the readiness that follows from it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from protocol.services import HealthReport
from scheduler import events
from scheduler.attempts import held_attempt
from scheduler.endpoints import attempt_endpoints
from scheduler.models import Attempt, Node
from scheduler.models.endpoints import Health
from scheduler.services import readiness_changed
from scheduler.states import utcnow


def report_health(session: Session, node: Node, attempt_id: int, report: HealthReport, *,
                  now: datetime | None = None) -> Attempt:
    """Record a node's health report of an attempt it holds: each endpoint's health (an event when
    one turns unhealthy), its restarts (an event for each new one), and, when that moves the op's
    readiness, advance its job (scheduler.services.readiness_changed).

    Raises:
        NotFound, Conflict: the attempt is not one this node holds now.
    """
    now = now or utcnow()
    attempt = held_attempt(session, node, attempt_id)
    op = attempt.op
    changed = False
    endpoints = {e.port: e for e in attempt_endpoints(session, attempt) if e.closed_at is None}
    for port in report.ports:
        endpoint = endpoints.get(port.port)
        if endpoint is None:
            continue  # not an exposed port of this attempt's: nothing to record
        health = Health(port.state)
        if health == Health.UNHEALTHY and endpoint.health != Health.UNHEALTHY:
            events.record(session, op.job, "unhealthy",
                          f"{op.key}: port {port.port} is unhealthy: {port.detail or 'its health check failed'}.",
                          attempt=attempt, now=now)
        if (health, port.detail) != (endpoint.health, endpoint.health_detail):
            changed = changed or health != endpoint.health
            endpoint.health, endpoint.health_detail, endpoint.health_at = health, port.detail, now
    if report.restarts > attempt.restarts:
        tries = restart_tries(op.spec)
        of = f" of {tries}" if tries is not None else ""
        events.record(session, op.job, "restarted",
                      f"{op.key}: its container was restarted in place on node {node.name} (restart "
                      f"{report.restarts}{of}): {report.reason or 'it ended'}.", attempt=attempt, now=now)
        attempt.restarts = report.restarts
        changed = True
    if report.restarting != attempt.restarting:
        attempt.restarting = report.restarting
        changed = True
    session.flush()
    if changed:
        readiness_changed(session, op, now=now)
    return attempt


def restart_tries(spec: dict) -> int | None:
    """How many in-place restarts the op's restart_policy allows; None for no limit."""
    policy = spec.get("restart_policy")
    if isinstance(policy, dict) and policy.get("restart_tries") is not None:
        return int(policy["restart_tries"])
    return None
