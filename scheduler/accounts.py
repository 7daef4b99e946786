"""Accounts, passwords and API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from scheduler import ledger
from scheduler.errors import AuthenticationError, Conflict, NotFound, PeergridError
from scheduler.models import ApiToken, User
from scheduler.states import utcnow

API_TOKEN_PREFIX = "pg_"
NODE_TOKEN_PREFIX = "pgn_"
JOIN_TOKEN_PREFIX = "pgj_"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 254:
        raise PeergridError(f"{email!r} is not an email address.")
    return email


def create_user(
    session: Session, email: str, password: str, *, is_admin: bool = False, starter_credits: int = 0
) -> User:
    """Create an account, with the starter grant when the platform gives one.

    Raises:
        Conflict: an account with this email exists.
        PeergridError: the email or password is unusable.
    """
    email = normalise_email(email)
    if len(password) < 8:
        raise PeergridError("The password must be at least 8 characters long.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"An account for {email} already exists.")
    user = User(email=email, password_hash=generate_password_hash(password), is_admin=is_admin)
    session.add(user)
    session.flush()
    ledger.starter_grant(session, user, starter_credits)
    return user


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def user_named(session: Session, ref: str) -> User:
    """The account of an email or an id.

    Raises:
        NotFound: there is none.
    """
    ref = ref.strip()
    user = session.get(User, int(ref)) if ref.isascii() and ref.isdigit() and len(ref) < 19 else None
    if user is None:
        user = session.scalar(select(User).where(User.email == ref.lower()))
    if user is None:
        raise NotFound(f"There is no account {ref!r}; give its email or its id.")
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    """Return the user whose email and password these are.

    Raises:
        AuthenticationError: no such account or a wrong password (the message does not say which).
    """
    user = find_user(session, email)
    if user is None or not check_password_hash(user.password_hash, password):
        raise AuthenticationError("Wrong email or password.")
    return user


def create_api_token(session: Session, user: User, name: str = "") -> str:
    """Create an API token for user and return it; only its hash is kept."""
    token = new_token(API_TOKEN_PREFIX)
    session.add(
        ApiToken(user=user, name=name[:100], token_hash=hash_token(token), prefix=token[:10])
    )
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User:
    """Return the user an API token belongs to.

    Raises:
        AuthenticationError: the token is unknown or revoked.
    """
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    if row is None:
        raise AuthenticationError("The API token is unknown or was revoked.")
    now = utcnow()
    # Write at most once a minute per token, so reads stay reads.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return row.user


def revoke_token(session: Session, user: User, token_id: int) -> ApiToken:
    """Revoke one of user's API tokens; it stops working at once.

    Raises:
        NotFound: no such token of theirs.
    """
    from scheduler.errors import NotFound

    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound(f"There is no token {token_id} of yours.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def tokens_of(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))
