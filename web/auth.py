"""Who is calling: a person by API token or session cookie, or a worker agent by node token."""

from __future__ import annotations

import hmac
import secrets

from flask import abort, g, request, session

from scheduler.accounts import JOIN_TOKEN_PREFIX, NODE_TOKEN_PREFIX, user_for_token
from scheduler.errors import AuthenticationError
from scheduler.models import Node, User
from scheduler.nodes import node_for_token
from web.db import db

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def session_user() -> User | None:
    """The person signed in to the dashboard, if any."""
    if "user" not in g:
        user_id = session.get("user_id")
        g.user = db().get(User, user_id) if user_id is not None else None
    return g.user


def require_user() -> User:
    """The person making an API call: by bearer token, or by session cookie for reads.

    Raises:
        AuthenticationError: neither is there, or the token is not a user's.
    """
    token = bearer_token()
    if token is not None:
        if token.startswith(NODE_TOKEN_PREFIX):
            raise AuthenticationError("This is a node token; the API for people needs an API token.")
        if token.startswith(JOIN_TOKEN_PREFIX):
            raise AuthenticationError("This is a join token: it only makes nodes (POST /api/v1/nodes/join); "
                                      "the API for people needs an API token.")
        return user_for_token(db(), token)
    # The cookie counts only for reads, so a page elsewhere cannot post on a person's behalf.
    if request.method in SAFE_METHODS:
        user = session_user()
        if user is not None:
            return user
    raise AuthenticationError(
        "Send an API token as 'Authorization: Bearer <token>' (peergrid admin create-token makes one)."
    )


def require_admin() -> User:
    user = require_user()
    if not user.is_admin:
        abort(403, "Only an admin may do this.")
    return user


def node_token() -> str:
    """The node token a worker agent sends; whose it is, scheduler.nodes.node_for_token says."""
    token = bearer_token()
    if token is None:
        raise AuthenticationError("Send the node token as 'Authorization: Bearer <token>'.")
    if token.startswith(JOIN_TOKEN_PREFIX):
        raise AuthenticationError("This is a join token: a worker joins with it (PEERGRID_JOIN_TOKEN) and then "
                                  "speaks with the node token it got.")
    return token


def require_node() -> Node:
    return node_for_token(db(), node_token())


def require_join_token() -> str:
    """The join token a worker sends to join; whether it is a live one, scheduler.joining.join says."""
    token = bearer_token()
    if token is None:
        raise AuthenticationError("Send the join token as 'Authorization: Bearer <token>' "
                                  "(`peergrid node join-token` makes one).")
    return token


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf(*, header: bool = False) -> None:
    """Refuse a dashboard write that does not carry the session's token: in its form, or in the
    X-CSRF-Token header for a page's script."""
    sent = request.headers.get("X-CSRF-Token", "") if header else request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    # Both must be there: two missing tokens are no proof that the page was ours.
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "The page expired; reload it and try again.")
