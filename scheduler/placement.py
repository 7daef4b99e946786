"""Placement and price: which market an op goes to, what it may cost, and what its seconds cost.

An op goes to the market it names, or else to the cheapest market whose hardware covers it. Its
price is the market's per-GPU-second price times the GPUs it holds (or one core for a CPU market);
its most possible cost is that over its whole time limit, for every try it is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.gpus import gb_text, version_tuple
from scheduler.errors import NoMarket
from scheduler.jobdef import JobDefinition, OpDefinition
from scheduler.models import Market


@dataclass(frozen=True)
class Requirements:
    """What one op needs of a machine."""

    gpu_count: int = 0
    min_vram_mb: int = 0
    # The oldest CUDA version the op accepts (the lowest of meta.system_requirements.required_cuda).
    min_cuda_version: str | None = None

    def as_dict(self) -> dict:
        return {"gpu_count": self.gpu_count, "min_vram_mb": self.min_vram_mb, "min_cuda_version": self.min_cuda_version}


def requirements_for(op: OpDefinition, definition: JobDefinition) -> Requirements:
    vram = op.min_vram_mb
    system = definition.meta.get("system_requirements") or {}
    if op.gpu_count and system.get("vram_total_mb"):
        vram = max(vram, int(system["vram_total_mb"]))
    cuda = None
    if op.gpu_count and system.get("required_cuda"):
        cuda = str(min(system["required_cuda"], key=lambda v: version_tuple(str(v))))
    return Requirements(gpu_count=op.gpu_count, min_vram_mb=vram, min_cuda_version=cuda)


def covers(market: Market, need: Requirements) -> bool:
    """Whether every machine that qualifies for market can run an op with these needs."""
    if market.gpu_count != need.gpu_count:
        return False
    if market.is_cpu:
        return True
    if need.min_cuda_version and version_tuple(market.min_cuda_version) < version_tuple(need.min_cuda_version):
        return False
    return market.min_vram_mb >= need.min_vram_mb


def choose_market(markets: list[Market], need: Requirements, slug: str | None = None) -> Market:
    """Return the market of markets an op with these needs goes to.

    Raises:
        NoMarket: the named market does not exist or cannot serve the op, or no market can.
    """
    if slug is not None:
        market = next((m for m in markets if m.slug == slug), None)
        if market is None:
            raise NoMarket(f"There is no market {slug!r}; GET /api/v1/markets lists them.")
        if not covers(market, need):
            raise NoMarket(f"Market {slug!r} cannot serve an op that needs {describe(need)}.")
        return market
    candidates = [m for m in markets if covers(m, need)]
    if not candidates:
        raise NoMarket(f"No market serves an op that needs {describe(need)}.")
    return min(candidates, key=lambda m: (m.price_per_second, m.id))


def describe(need: Requirements) -> str:
    if not need.gpu_count:
        return "no GPU"
    gpus = f"{need.gpu_count} GPU" + ("s" if need.gpu_count > 1 else "")
    if need.min_vram_mb:
        gpus += f" with at least {gb_text(need.min_vram_mb)} GB of memory each"
    if need.min_cuda_version:
        gpus += f" and CUDA {need.min_cuda_version} or newer"
    return gpus


# -- price -----------------------------------------------------------------------------------


def billed_units(market: Market, gpus: list | tuple | None) -> int:
    """What an attempt is charged per second for: the GPUs it holds, or one core on a CPU market."""
    return len(gpus or []) if market.gpu_count else 1


def unit_name(market: Market, units: int) -> str:
    name = "GPU" if market.gpu_count else "core"
    return name if units == 1 else name + "s"


def cost_of(market: Market, units: int, elapsed_ms: int) -> int:
    """What elapsed_ms of units (GPUs or cores) cost on market, in micro-credits, rounded down."""
    return elapsed_ms * units * market.price_per_second // 1000


def most_cost(market: Market, *, timeout_s: int, tries: int) -> int:
    """The most an op of market can cost: every try running its whole time limit."""
    return cost_of(market, market.gpu_count or 1, timeout_s * 1000) * tries


@dataclass(frozen=True)
class PlannedOp:
    """An op with where it goes and what it may cost, before anything is stored."""

    definition: OpDefinition
    market: Market
    timeout_s: int
    max_cost: int


def plan_ops(
    session: Session, definition: JobDefinition, *, market_slug: str | None, default_timeout_s: int
) -> list[PlannedOp]:
    """Each op with its market, time limit and most possible cost; stores nothing.

    Raises:
        NoMarket: an op needs hardware no market serves.
    """
    markets = list(session.scalars(select(Market)))  # read once: a job may have a thousand ops
    return [
        plan_op(markets, op_def, definition, market_slug=market_slug, default_timeout_s=default_timeout_s)
        for op_def in definition.ops
    ]


def plan_op(
    markets: list[Market], op_def: OpDefinition, definition: JobDefinition, *, market_slug: str | None,
    default_timeout_s: int,
) -> PlannedOp:
    """One op of definition with its market, time limit and most possible cost.

    Raises:
        NoMarket: the op needs hardware no market of markets serves.
    """
    market = choose_market(markets, requirements_for(op_def, definition), op_def.args.get("market") or market_slug)
    timeout = min(op_def.timeout_s or default_timeout_s, market.max_timeout_s)
    return PlannedOp(op_def, market, timeout, most_cost(market, timeout_s=timeout, tries=op_def.max_attempts))
