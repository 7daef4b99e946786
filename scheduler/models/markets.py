"""Markets: named queues with hardware requirements and a price."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models.base import Base
from scheduler.states import utcnow


class Market(Base):
    __tablename__ = "markets"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # The broker queue its offers go to.
    queue: Mapped[str] = mapped_column(String(100), unique=True)
    # GPUs each op holds; 0 for a CPU market.
    gpu_count: Mapped[int] = mapped_column(default=0)
    min_vram_mb: Mapped[int] = mapped_column(default=0)
    # Allowed GPU model names; empty means any.
    gpu_models: Mapped[list[Any]] = mapped_column(default=list)
    min_compute_capability: Mapped[str | None] = mapped_column(String(16))
    min_cuda_version: Mapped[str | None] = mapped_column(String(16))
    # Micro-credits per GPU-second (per core-second in a CPU market).
    price_per_second: Mapped[int] = mapped_column(default=0)
    # The platform's share of each charge, in parts per million.
    fee_ppm: Mapped[int] = mapped_column(default=0)
    max_timeout_s: Mapped[int] = mapped_column(default=86_400)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def is_cpu(self) -> bool:
        return self.gpu_count == 0

    def __repr__(self) -> str:
        return f"<Market {self.slug}>"
