"""Join tokens: credentials that can do one thing, make nodes for the account that made them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models.accounts import User
from scheduler.models.base import Base
from scheduler.states import utcnow


class JoinToken(Base):
    """A bearer token a worker joins with, becoming a node of the token's owner; only its SHA-256 is stored."""

    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # A label, so its owner can tell their join tokens apart ("compose on rack 3").
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, for the same reason.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by the last join, at most once a minute.
    last_used_at: Mapped[datetime | None]
    # Set when its owner revoked it: it joins no more; the nodes it made keep their own tokens.
    revoked_at: Mapped[datetime | None]

    owner: Mapped[User] = relationship()

    def __repr__(self) -> str:
        return f"<JoinToken {self.id} {self.name!r}>"
