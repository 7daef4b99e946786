"""Endpoints: the URL each exposed port of a held attempt gets, which forwards a gateway may
accept for a node, and the gateways workers tunnel to."""

from __future__ import annotations

import base64
from collections.abc import Iterable
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from scheduler.errors import AuthenticationError, Conflict, NotFound
from scheduler.jobdef import exposed_ports
from scheduler.models import Attempt, Endpoint, EndpointForward, Gateway, Node, Op
from scheduler.models.endpoints import Health
from scheduler.nodes import node_for_token
from protocol.services import GatewayRef
from scheduler.states import ATTEMPT_HELD, NodeState, utcnow

# What a label is: 10 characters of lowercase base32, 50 random bits, a valid DNS label.
LABEL = re.compile(r"[a-z2-7]{10}")
# Where a session keeps the endpoint domain (scheduler.core), and what it is when none was given.
ENDPOINT_DOMAIN = "peergrid.endpoint_domain"
DEFAULT_DOMAIN = "localhost:8080"


def new_label() -> str:
    """A fresh random endpoint label."""
    return base64.b32encode(secrets.token_bytes(10)).decode()[:10].lower()


def endpoint_url(label: str, domain: str) -> str:
    """The URL at which an endpoint is served: at / of its own host name under the gateway's domain."""
    return f"http://{label}.{domain}/"


def endpoint_domain(session: Session) -> str:
    """The domain endpoint URLs are under, as the process's settings say (scheduler.core puts it
    on every session it makes)."""
    return session.info.get(ENDPOINT_DOMAIN) or DEFAULT_DOMAIN


def endpoint_label(op: Op, port: int) -> str:
    """The label of the URL of op's port: chosen the first time it is asked for, and then kept, so
    the URL is known before the op runs and stays the same when the op is placed again."""
    labels = dict(op.endpoint_labels or {})
    if str(port) not in labels:
        labels[str(port)] = new_label()
        op.endpoint_labels = labels  # a new dict: JSON columns see only reassignment
    return labels[str(port)]


def op_endpoint_url(session: Session, op: Op, port: int | None = None) -> str | None:
    """The URL of op's port (its first exposed port if None), or None when it exposes no such port
    that is known now (ports a literal decides are known once it resolves)."""
    ports = exposed_ports(op.spec.get("expose"))
    if port is None:
        if not ports:
            return None
        port = min(ports)
    elif ports is not None and port not in ports:
        return None
    return endpoint_url(endpoint_label(op, port), endpoint_domain(session))


def open_endpoints(
    session: Session, attempt: Attempt, *, now: datetime | None = None, all_private: bool = False
) -> list[Endpoint]:
    """Open one endpoint for each port the attempt's op exposes (none if it exposes none).

    Each port of an op has one endpoint row and one label for good: a later attempt takes the
    rows over, so its URL is the one the op had. Private as the op says, or all of them when the
    cluster makes every endpoint private.
    """
    now = now or utcnow()
    op = attempt.op
    ports = exposed_ports(op.spec.get("expose")) or frozenset()
    if not ports:
        return []
    kept = {e.port: e for e in session.scalars(select(Endpoint).where(Endpoint.op_id == op.id))}
    opened = []
    for port in sorted(ports):
        endpoint = kept.get(port)
        if endpoint is None:
            endpoint = Endpoint(op=op, port=port, label=endpoint_label(op, port))
            session.add(endpoint)
        endpoint.attempt = attempt
        endpoint.private = all_private or bool(op.spec.get("private"))
        endpoint.opened_at, endpoint.closed_at = now, None
        opened.append(endpoint)
    session.flush()
    return opened


def close_endpoints(session: Session, attempt: Attempt, *, now: datetime | None = None) -> None:
    """Close the attempt's endpoints: its URLs stop serving, and gateways drop their forwards."""
    session.execute(
        update(Endpoint)
        .where(Endpoint.attempt_id == attempt.id, Endpoint.closed_at.is_(None))
        .values(closed_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(EndpointForward)
        .where(EndpointForward.endpoint_id.in_(select(Endpoint.id).where(Endpoint.attempt_id == attempt.id)))
        .execution_options(synchronize_session=False)
    )


def attempt_endpoints(session: Session, attempt: Attempt) -> list[Endpoint]:
    return list(session.scalars(select(Endpoint).where(Endpoint.attempt_id == attempt.id).order_by(Endpoint.port)))


def endpoint_ready(endpoint: Endpoint) -> bool:
    """Whether an endpoint is ready: open, its node's tunnel to a live gateway carries it, and its
    node reports its port healthy (scheduler.health)."""
    return endpoint.closed_at is None and endpoint.health == Health.HEALTHY and forwarded(endpoint)


def forwarded(endpoint: Endpoint, *, now: datetime | None = None) -> bool:
    """Whether at least one live gateway (its lease not run out) holds the endpoint's forward."""
    now = now or utcnow()
    return any(f.gateway.live(now) for f in endpoint.forwards)


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


def any_node_serves_endpoints(session: Session) -> bool:
    """Whether a node that is up and takes work can serve endpoints (has a job network)."""
    return session.scalar(
        select(Node.id).where(
            Node.serves_endpoints.is_(True), Node.state.in_((NodeState.ONLINE, NodeState.BUSY)),
            Node.banned_at.is_(None), Node.removed_at.is_(None),
        ).limit(1)
    ) is not None


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
    now = now or utcnow()
    endpoint_id = session.scalar(select(Endpoint.id).where(Endpoint.label == label, Endpoint.closed_at.is_(None)))
    gateway_id = session.scalar(select(Gateway.id).where(Gateway.name == gateway))
    if endpoint_id is None or gateway_id is None:
        return
    held = session.get(EndpointForward, (endpoint_id, gateway_id))
    if held is None:
        session.add(EndpointForward(endpoint_id=endpoint_id, gateway_id=gateway_id, forwarded_at=now))
    else:
        held.forwarded_at = now
    session.flush()


def mark_unforwarded(session: Session, labels: list[str], gateway: str) -> None:
    """Record that gateway no longer holds the forwards of labels."""
    if labels:
        session.execute(
            delete(EndpointForward)
            .where(EndpointForward.gateway_id.in_(select(Gateway.id).where(Gateway.name == gateway)),
                   EndpointForward.endpoint_id.in_(select(Endpoint.id).where(Endpoint.label.in_(labels))))
            .execution_options(synchronize_session=False)
        )


def forwarders(session: Session, label: str, *, now: datetime | None = None) -> list[str]:
    """The names of the live gateways that hold the forward of endpoint label."""
    now = now or utcnow()
    return list(session.scalars(
        select(Gateway.name).join(EndpointForward, EndpointForward.gateway_id == Gateway.id)
        .join(Endpoint, Endpoint.id == EndpointForward.endpoint_id)
        .where(Endpoint.label == label, Gateway.expires_at > now).order_by(Gateway.name)
    ))


# -- gateways ------------------------------------------------------------------------------


def announce_gateway(session: Session, name: str, ssh_address: str, host_key: str, *, lease_s: float,
                     now: datetime | None = None) -> Gateway:
    """Record a gateway that has started: where workers reach it, the host key they pin, and its
    first lease. What it held before it started is gone with its old process."""
    now = now or utcnow()
    gateway = session.scalar(select(Gateway).where(Gateway.name == name))
    if gateway is None:
        gateway = Gateway(name=name, ssh_address=ssh_address, host_key=host_key, started_at=now)
        session.add(gateway)
        session.flush()
    else:
        gateway.ssh_address, gateway.host_key, gateway.started_at = ssh_address, host_key, now
        session.execute(delete(EndpointForward).where(EndpointForward.gateway_id == gateway.id)
                        .execution_options(synchronize_session=False))
    gateway.seen_at, gateway.expires_at = now, now + timedelta(seconds=lease_s)
    session.flush()
    return gateway


def renew_gateway(session: Session, name: str, held: Iterable[str], *, lease_s: float,
                  now: datetime | None = None) -> bool:
    """Renew a running gateway's lease, and set its forwards in the store to the labels it holds
    (mending what a race between a node's old and new connection left); False if the store no
    longer knows it as running (it must announce itself again)."""
    now, held = now or utcnow(), set(held)
    gateway = session.scalar(select(Gateway).where(Gateway.name == name, Gateway.expires_at.is_not(None)))
    if gateway is None:
        return False
    gateway.seen_at, gateway.expires_at = now, now + timedelta(seconds=lease_s)
    recorded = dict(session.execute(
        select(Endpoint.label, Endpoint.id).join(EndpointForward, EndpointForward.endpoint_id == Endpoint.id)
        .where(EndpointForward.gateway_id == gateway.id)
    ).all())
    extra = [endpoint_id for label, endpoint_id in recorded.items() if label not in held]
    if extra:
        session.execute(delete(EndpointForward)
                        .where(EndpointForward.gateway_id == gateway.id, EndpointForward.endpoint_id.in_(extra))
                        .execution_options(synchronize_session=False))
    missing = [label for label in held if label not in recorded]
    if missing:
        still = select(Endpoint.id).where(Endpoint.label.in_(missing), Endpoint.closed_at.is_(None))
        for endpoint_id in session.scalars(still):
            session.add(EndpointForward(endpoint_id=endpoint_id, gateway_id=gateway.id, forwarded_at=now))
    session.flush()
    return True


def withdraw_gateway(session: Session, name: str, *, now: datetime | None = None) -> None:
    """Record that a gateway has stopped: workers are no longer sent to it, and it forwards nothing."""
    gateway = session.scalar(select(Gateway).where(Gateway.name == name))
    if gateway is None:
        return
    session.execute(delete(EndpointForward).where(EndpointForward.gateway_id == gateway.id)
                    .execution_options(synchronize_session=False))
    gateway.seen_at, gateway.expires_at = now or utcnow(), None
    session.flush()


def live_gateways(session: Session, *, now: datetime | None = None) -> list[Gateway]:
    """The gateways whose lease has not run out, by name: every one of them is handed to every node."""
    now = now or utcnow()
    return list(session.scalars(select(Gateway).where(Gateway.expires_at > now).order_by(Gateway.name)))


def gateway_refs(session: Session, *, now: datetime | None = None) -> tuple[GatewayRef, ...]:
    """The live gateways as a node is told of them: name, SSH address, host key."""
    return tuple(GatewayRef(g.name, g.ssh_address, g.host_key) for g in live_gateways(session, now=now))


def require_label(label: str) -> str:
    """Return label if it can be an endpoint's.

    Raises:
        NotFound: it cannot.
    """
    if not LABEL.fullmatch(label):
        raise NotFound(f"{label!r} is not an endpoint's name.")
    return label
