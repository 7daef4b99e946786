"""Join tokens: a credential a worker joins with, becoming a node of the token's owner.

A join token can do exactly one thing, make nodes, so a provider can give it to machines (or to
replicas of one container) that must not hold the API token, which spends credits and asks for payouts.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.accounts import JOIN_TOKEN_PREFIX, hash_token, new_token
from scheduler.errors import AuthenticationError, Conflict, NotFound, PeergridError
from scheduler.models import JoinToken, Node, User
from scheduler.nodes import create_node
from scheduler.states import utcnow

UNKNOWN = ("The join token is unknown or was revoked: make a new one with `peergrid node join-token` "
           "and give it to the worker as PEERGRID_JOIN_TOKEN.")


def create_join_token(session: Session, owner: User, name: str = "") -> tuple[JoinToken, str]:
    """Make a join token for owner and return it with the token itself, which is not kept.

    Raises:
        PeergridError: the label is longer than 100 characters or holds a control character.
    """
    name = name.strip()
    if len(name) > 100:
        raise PeergridError("A join token's label may be at most 100 characters long.")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise PeergridError("A join token's label cannot hold a control character (NUL, a line break, a tab).")
    token = new_token(JOIN_TOKEN_PREFIX)
    row = JoinToken(owner_id=owner.id, name=name, token_hash=hash_token(token), prefix=token[:10])
    session.add(row)
    session.flush()
    return row, token


def revoke_join_token(session: Session, owner: User, token_id: int, *, now: datetime | None = None) -> JoinToken:
    """Revoke one of owner's join tokens: it joins no more, and the nodes it made keep working.

    Raises:
        NotFound: owner has no join token of that id.
    """
    row = session.get(JoinToken, token_id)
    if row is None or row.owner_id != owner.id:
        raise NotFound(f"There is no join token {token_id} of yours.")
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    return row


def join_tokens_of(session: Session, owner: User) -> list[tuple[JoinToken, int]]:
    """owner's join tokens, newest first, each with how many nodes it made (removed ones too)."""
    made = (
        select(Node.join_token_id, func.count(Node.id).label("nodes"))
        .where(Node.join_token_id.is_not(None))
        .group_by(Node.join_token_id)
        .subquery()
    )
    rows = session.execute(
        select(JoinToken, func.coalesce(made.c.nodes, 0))
        .outerjoin(made, made.c.join_token_id == JoinToken.id)
        .where(JoinToken.owner_id == owner.id)
        .order_by(JoinToken.id.desc())
    ).all()
    return [(row, nodes) for row, nodes in rows]


def join_token_for(session: Session, token: str) -> JoinToken:
    """The live join token a token is.

    Raises:
        AuthenticationError: it is unknown or revoked (its owner's account gone, it went with it).
    """
    row = session.scalar(select(JoinToken).where(JoinToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise AuthenticationError(UNKNOWN)
    return row


def join(session: Session, token: str, name: str, *, now: datetime | None = None) -> tuple[Node, str]:
    """Make a node called name for the owner of a join token; return it with its node token, which is not kept.

    Raises:
        AuthenticationError: the join token is unknown or revoked.
        Conflict: the owner already has a node of that name.
        PeergridError: the name is unusable.
    """
    row = join_token_for(session, token)
    # A savepoint, so that two workers joining with one name at once end in a Conflict, not a crash.
    try:
        with session.begin_nested():
            node, node_token = create_node(session, row.owner, name)
    except (Conflict, IntegrityError) as e:
        raise Conflict(
            f"Your account already has a node called {name.strip()!r}: give each worker its own name "
            "(--name / PEERGRID_NODE_NAME)."
        ) from e
    node.join_token_id = row.id
    now = now or utcnow()
    # Write at most once a minute per token, as API tokens do.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return node, node_token
