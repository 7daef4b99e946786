"""Endpoints: the URL each exposed port of a held attempt gets, which forwards a gateway may
accept for a node, and the gateways workers tunnel to."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scheduler.errors import AuthenticationError, Conflict, NotFound
from scheduler.jobdef import exposed_ports
from scheduler.models import Attempt, Endpoint, Gateway, Node
from scheduler.models.endpoints import Health
from scheduler.nodes import node_for_token
from scheduler.states import ATTEMPT_HELD, utcnow

# What a label is: 10 characters of lowercase base32, 50 random bits, a valid DNS label.
LABEL = re.compile(r"[a-z2-7]{10}")


def new_label() -> str:
    """A fresh random endpoint label."""
    return base64.b32encode(secrets.token_bytes(10)).decode()[:10].lower()


def endpoint_url(label: str, domain: str) -> str:
    """The URL at which an endpoint is served: at / of its own host name under the gateway's domain."""
    return f"http://{label}.{domain}/"


def open_endpoints(session: Session, attempt: Attempt, *, now: datetime | None = None) -> list[Endpoint]:
    """Record one endpoint for each port the attempt's op exposes (none if it exposes none)."""
    now = now or utcnow()
    op = attempt.op
    ports = exposed_ports(op.spec.get("expose")) or frozenset()
    made = [
        Endpoint(attempt=attempt, op=op, port=port, label=new_label(), private=bool(op.spec.get("private")), opened_at=now)
        for port in sorted(ports)
    ]
    session.add_all(made)
    session.flush()
    return made


def close_endpoints(session: Session, attempt: Attempt, *, now: datetime | None = None) -> None:
    """Close the attempt's endpoints: its URLs stop serving, and gateways drop their forwards."""
    session.execute(
        update(Endpoint)
        .where(Endpoint.attempt_id == attempt.id, Endpoint.closed_at.is_(None))
        .values(closed_at=now or utcnow(), forwarded_by=None, forwarded_at=None)
        .execution_options(synchronize_session=False)
    )


def attempt_endpoints(session: Session, attempt: Attempt) -> list[Endpoint]:
    return list(session.scalars(select(Endpoint).where(Endpoint.attempt_id == attempt.id).order_by(Endpoint.port)))


def endpoint_ready(endpoint: Endpoint) -> bool:
    """Whether an endpoint is ready: open, its node's tunnel to a gateway carries it, and its node
    reports its port healthy (scheduler.health)."""
    return endpoint.closed_at is None and endpoint.forwarded_at is not None and endpoint.health == Health.HEALTHY


def held_service_attempt(session: Session, op) -> Attempt | None:
    """The op's attempt a node holds now, if any (the latest)."""
    return session.scalar(
        select(Attempt).where(Attempt.op_id == op.id, Attempt.state.in_(ATTEMPT_HELD)).order_by(Attempt.id.desc()).limit(1)
    )


def op_ready(session: Session, op) -> bool:
    """Whether a service op is ready: its attempt now held has endpoints, and every one is ready."""
    attempt = held_service_attempt(session, op)
    if attempt is None:
        return False
    # Read afresh: mark_forwarded and mark_unforwarded update the rows behind the session's back.
    endpoints = list(session.scalars(
        select(Endpoint).where(Endpoint.attempt_id == attempt.id).execution_options(populate_existing=True)
    ))
    return bool(endpoints) and all(endpoint_ready(e) for e in endpoints)


def node_for_login(session: Session, username: str, password: str) -> Node:
    """The node a tunnel's SSH login names: its id as user name, its node token as password.

    Raises:
        AuthenticationError: the token is unknown, or is another node's.
        Banned: the node is banned.
    """
    node = node_for_token(session, password)
    if str(node.id) != username:
        raise AuthenticationError(f"The node token is not node {username}'s.")
    return node


def authorise_forward(session: Session, node_id: int, label: str, port: int) -> Endpoint:
    """The endpoint a node asks to forward, if it may: an open endpoint of an attempt it holds now.

    Raises:
        NotFound: no open endpoint has this label and port.
        Conflict: the endpoint's attempt is not this node's now.
    """
    endpoint = session.scalar(select(Endpoint).where(Endpoint.label == label))
    if endpoint is None or endpoint.port != port or endpoint.closed_at is not None:
        raise NotFound(f"There is no open endpoint {label} on port {port}.")
    attempt = endpoint.attempt
    if attempt.node_id != node_id or attempt.state not in ATTEMPT_HELD:
        raise Conflict(f"Endpoint {label} belongs to an attempt node {node_id} does not hold.")
    return endpoint


def open_endpoint(session: Session, label: str) -> Endpoint | None:
    """The open endpoint of this label, or None."""
    return session.scalar(select(Endpoint).where(Endpoint.label == label, Endpoint.closed_at.is_(None)))


def still_open(session: Session, labels: list[str]) -> set[str]:
    """Which of labels name endpoints that are still open."""
    if not labels:
        return set()
    return set(session.scalars(select(Endpoint.label).where(Endpoint.label.in_(labels), Endpoint.closed_at.is_(None))))


def mark_forwarded(session: Session, label: str, gateway: str, *, now: datetime | None = None) -> None:
    """Record that gateway holds the forward of the open endpoint label."""
    session.execute(
        update(Endpoint)
        .where(Endpoint.label == label, Endpoint.closed_at.is_(None))
        .values(forwarded_by=gateway, forwarded_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )


def mark_unforwarded(session: Session, labels: list[str], gateway: str) -> None:
    """Record that gateway no longer holds the forwards of labels."""
    if labels:
        session.execute(
            update(Endpoint)
            .where(Endpoint.label.in_(labels), Endpoint.forwarded_by == gateway)
            .values(forwarded_by=None, forwarded_at=None)
            .execution_options(synchronize_session=False)
        )


def announce_gateway(session: Session, name: str, ssh_address: str, host_key: str, *, now: datetime | None = None) -> Gateway:
    """Record a gateway that has started: where workers reach it and the host key they pin. What
    it held before it started is gone with its old process."""
    now = now or utcnow()
    gateway = session.scalar(select(Gateway).where(Gateway.name == name))
    if gateway is None:
        gateway = Gateway(name=name, ssh_address=ssh_address, host_key=host_key, started_at=now)
        session.add(gateway)
    else:
        gateway.ssh_address, gateway.host_key, gateway.started_at = ssh_address, host_key, now
    session.execute(
        update(Endpoint).where(Endpoint.forwarded_by == name).values(forwarded_by=None, forwarded_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return gateway


def current_gateway(session: Session) -> Gateway | None:
    """The gateway workers are told to tunnel to: the one started last."""
    return session.scalar(select(Gateway).order_by(Gateway.started_at.desc(), Gateway.id.desc()).limit(1))


def require_label(label: str) -> str:
    """Return label if it can be an endpoint's.

    Raises:
        NotFound: it cannot.
    """
    if not LABEL.fullmatch(label):
        raise NotFound(f"{label!r} is not an endpoint's name.")
    return label
