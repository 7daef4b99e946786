"""Who may open a private endpoint: its job's owner, by API token or by a pass the dashboard signs.

The dashboard signs a short-lived hop pass (label, user, expiry) that the gateway trades, on the
endpoint's own host, for a longer-lived access cookie of the same form. Both are HMAC-SHA256 over
the cluster's secret key, each under a key of its own purpose, so a hop pass is never a cookie.
Whether the holder still owns the endpoint's job is asked of the store each time, so a revoked
API token or a job that is no longer theirs stops opening it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.accounts import API_TOKEN_PREFIX, JOIN_TOKEN_PREFIX, NODE_TOKEN_PREFIX, user_for_token
from scheduler.endpoints import LABEL, endpoint_url
from scheduler.errors import AuthenticationError, PeergridError
from scheduler.models import Endpoint, Job, Op

# The path on an endpoint's host at which the gateway takes a hop pass; the service never sees it.
HOP_PATH = "/__peergrid/hop"
# The cookie the gateway sets on an endpoint's host; the service never sees it.
COOKIE = "peergrid_endpoint"
# How long a hop pass is good for: long enough for one redirect.
HOP_TTL_S = 60
# How long the access cookie is good for; ownership is still checked on every request.
COOKIE_TTL_S = 12 * 3600

HOP, PASS_COOKIE = "hop", "cookie"


class AccessRefused(PeergridError):
    """Raised when a caller may not open a private endpoint; the message says what to do."""


@dataclass(frozen=True)
class Pass:
    """What a verified hop pass or cookie says: who, for which endpoint, until when, and its nonce."""

    label: str
    user_id: int
    expires: int
    nonce: str


def _key(secret_key: str, purpose: str) -> bytes:
    return hmac.new(secret_key.encode(), f"peergrid endpoint {purpose}".encode(), hashlib.sha256).digest()


def _mac(secret_key: str, purpose: str, payload: str) -> str:
    digest = hmac.new(_key(secret_key, purpose), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_pass(secret_key: str, purpose: str, label: str, user_id: int, ttl_s: int, *, now: float | None = None) -> str:
    """A pass for user_id to open endpoint label, good for ttl_s seconds: `label.user.expires.nonce.mac`."""
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = f"{label}.{user_id}.{expires}.{secrets.token_urlsafe(9)}"
    return f"{payload}.{_mac(secret_key, purpose, payload)}"


def read_pass(secret_key: str, purpose: str, token: str, label: str, *, now: float | None = None) -> Pass:
    """The pass token is, if it is a genuine, unexpired one of purpose for endpoint label.

    Raises:
        AccessRefused: it is not.
    """
    parts = token.split(".")
    if len(parts) != 5:
        raise AccessRefused("The pass is not one this cluster signed; open the endpoint from its job's page again.")
    payload, mac = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(mac.encode(), _mac(secret_key, purpose, payload).encode()):
        raise AccessRefused("The pass is not one this cluster signed; open the endpoint from its job's page again.")
    pass_label, user_id, expires, nonce = parts[:4]
    if pass_label != label:
        raise AccessRefused("The pass is for another endpoint; open this one from its job's page.")
    if int(expires) < (time.time() if now is None else now):
        raise AccessRefused("The pass has expired; open the endpoint from its job's page again.")
    return Pass(label=label, user_id=int(user_id), expires=int(expires), nonce=nonce)


def hop_url(secret_key: str, domain: str, label: str, user_id: int) -> str:
    """Where the dashboard sends an endpoint's owner: the gateway's hop path on the endpoint's host."""
    return f"{endpoint_url(label, domain).rstrip('/')}{HOP_PATH}?pass={sign_pass(secret_key, HOP, label, user_id, HOP_TTL_S)}"


def is_peergrid_token(token: str) -> bool:
    """Whether a bearer token is one of peergrid's (an API token, or a node or join token sent by
    mistake), and so the gateway's to check and to strip, rather than one the service takes."""
    return token.startswith((API_TOKEN_PREFIX, NODE_TOKEN_PREFIX, JOIN_TOKEN_PREFIX))


@dataclass(frozen=True)
class Holder:
    """An open endpoint's job and owner."""

    job_id: int
    owner_id: int


def endpoint_holder(session: Session, label: str) -> Holder | None:
    """The job and owner of the open endpoint label, or None when no endpoint of that label is open."""
    if not LABEL.fullmatch(label):
        return None
    row = session.execute(
        select(Job.id, Job.owner_id)
        .join(Op, Op.job_id == Job.id)
        .join(Endpoint, Endpoint.op_id == Op.id)
        .where(Endpoint.label == label, Endpoint.closed_at.is_(None))
    ).first()
    return Holder(job_id=row[0], owner_id=row[1]) if row else None


def owner_by_token(session: Session, label: str, token: str) -> int:
    """The id of the user whose API token this is, if they own the open endpoint label's job.

    Raises:
        AccessRefused: the token is unknown or revoked, or its user does not own the job.
    """
    try:
        user = user_for_token(session, token)
    except AuthenticationError as e:
        raise AccessRefused(f"{e} This endpoint is private: send an API token of its job's owner.") from None
    return _owner(session, label, user.id)


def owner_by_pass(session: Session, label: str, user_id: int) -> int:
    """user_id, if that user owns the open endpoint label's job (a verified pass named them).

    Raises:
        AccessRefused: they do not, or the endpoint is not open.
    """
    return _owner(session, label, user_id)


def _owner(session: Session, label: str, user_id: int) -> int:
    holder = endpoint_holder(session, label)
    if holder is None:
        raise AccessRefused("There is no such endpoint, or its op has ended.")
    if holder.owner_id != user_id:
        raise AccessRefused("This endpoint is private: it opens only for its job's owner.")
    return user_id
