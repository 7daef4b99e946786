"""Who leads the scheduler's upkeep, and whether the server could hear its nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models.base import Base


class Lease(Base):
    """A lock in the store that one process holds at a time, until it stops renewing it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    # Who holds it: host, process id and start time of the holding process.
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime]
    # Renewed by its holder every second or so; another may take it once this has passed.
    expires_at: Mapped[datetime]


class Listener(Base):
    """A web process that hears node heartbeats: it marks itself alive while it can reach the store."""

    __tablename__ = "listeners"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    alive_at: Mapped[datetime]
    # Since when it has been marking itself without a gap: node silence counts only from here.
    since: Mapped[datetime]
