"""What ordering work needs beyond jobs: arrays of jobs, admins' quotas, and each person's recent use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models.base import Base
from scheduler.states import utcnow


class JobArray(Base):
    """Jobs submitted together from one definition, each with its index (Slurm's --array)."""

    __tablename__ = "job_arrays"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    size: Mapped[int]
    # The most of its jobs that run at once (the %N of 0-999%N); None: no limit of its own.
    max_running: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quota(Base):
    """An admin's limits for one person, on every market (market_id None) or on one.

    None in a limit means that limit does not apply.
    """

    __tablename__ = "quotas"
    __table_args__ = (Index("uq_quotas_user_id_market_id", "user_id", "market_id", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    market_id: Mapped[int | None] = mapped_column(ForeignKey("markets.id", ondelete="CASCADE"))
    # The most GPUs (CPU slots, on a CPU market) the person's ops hold at once.
    max_running_gpus: Mapped[int | None]
    # The most of the person's jobs that wait (queued, not yet running) at once.
    max_waiting_jobs: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Usage(Base):
    """A person's GPU time of ended attempts, decayed: worth half as much after each half-life.

    gpu_ms (GPU-milliseconds, rounded) is the value as of as_of; what runs now is added when a pass reads it.
    """

    __tablename__ = "usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    gpu_ms: Mapped[int] = mapped_column(default=0)
    as_of: Mapped[datetime] = mapped_column(default=utcnow)
