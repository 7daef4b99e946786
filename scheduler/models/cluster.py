"""The cluster itself: who it is to the Docker engines its workers share with other clusters."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models.base import Base
from scheduler.states import utcnow

# The one row of the cluster table.
THIS_CLUSTER = 1


class Cluster(Base):
    __tablename__ = "cluster"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Made on first use and never changed: workers label everything they make on a Docker engine
    # with it (and their node), and touch nothing that does not carry both.
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Cluster {self.uid}>"
