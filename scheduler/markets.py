"""Which market an op goes to: the one it names, or the cheapest whose hardware covers it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.errors import NoMarket
from scheduler.jobdef import JobDefinition, OpDefinition
from scheduler.models import Market


@dataclass(frozen=True)
class Requirements:
    """What one op needs of a machine."""

    gpu_count: int = 0
    min_vram_mb: int = 0

    def as_dict(self) -> dict:
        return {"gpu_count": self.gpu_count, "min_vram_mb": self.min_vram_mb}


def requirements_for(op: OpDefinition, definition: JobDefinition) -> Requirements:
    vram = op.min_vram_mb
    system = definition.meta.get("system_requirements") or {}
    if op.gpu_count and system.get("vram_total_mb"):
        vram = max(vram, int(system["vram_total_mb"]))
    return Requirements(gpu_count=op.gpu_count, min_vram_mb=vram)


def covers(market: Market, need: Requirements) -> bool:
    """Whether every machine that qualifies for market can run an op with these needs."""
    if market.gpu_count != need.gpu_count:
        return False
    return market.is_cpu or market.min_vram_mb >= need.min_vram_mb


def choose_market(session: Session, need: Requirements, slug: str | None = None) -> Market:
    """Return the market an op with these needs goes to.

    Raises:
        NoMarket: the named market does not exist or cannot serve the op, or no market can.
    """
    if slug is not None:
        market = session.scalar(select(Market).where(Market.slug == slug))
        if market is None:
            raise NoMarket(f"There is no market {slug!r}; GET /api/v1/markets lists them.")
        if not covers(market, need):
            raise NoMarket(f"Market {slug!r} cannot serve an op that needs {_describe(need)}.")
        return market
    candidates = [m for m in session.scalars(select(Market)) if covers(m, need)]
    if not candidates:
        raise NoMarket(f"No market serves an op that needs {_describe(need)}.")
    return min(candidates, key=lambda m: (m.price_per_second, m.id))


def _describe(need: Requirements) -> str:
    if not need.gpu_count:
        return "no GPU"
    gpus = f"{need.gpu_count} GPU" + ("s" if need.gpu_count > 1 else "")
    if need.min_vram_mb:
        gpus += f" with at least {need.min_vram_mb / 1024:g} GB of memory each"
    return gpus
