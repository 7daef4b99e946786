"""Which market an op goes to: the one it names, or the cheapest whose hardware covers it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.errors import Conflict, NoMarket, NotFound, PeergridError
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


def version_tuple(value: str | None) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in str(value).split(".")) if value else ()


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
        gpus += f" with at least {need.min_vram_mb / 1000:g} GB of memory each"
    if need.min_cuda_version:
        gpus += f" and CUDA {need.min_cuda_version} or newer"
    return gpus


MARKET_FIELDS = {
    "name": str,
    "gpu_count": int,
    "min_vram_mb": int,
    "gpu_models": list,
    "min_compute_capability": str,
    "min_cuda_version": str,
    "price_per_second": int,
    "fee_ppm": int,
    "max_timeout_s": int,
}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _checked(values: dict) -> dict:
    """Check market fields given by an admin; raise PeergridError naming each wrong one."""
    problems = []
    out = {}
    for key, value in values.items():
        kind = MARKET_FIELDS.get(key)
        if kind is None:
            problems.append(f"{key} is not a market field (use {', '.join(MARKET_FIELDS)})")
            continue
        if value is None and key in ("min_compute_capability", "min_cuda_version"):
            out[key] = None
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{key} must be a whole number, 0 or more")
        elif kind is str and not isinstance(value, str):
            problems.append(f"{key} must be a string")
        elif kind is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key} must be a list of GPU model names")
        else:
            out[key] = value
    if out.get("fee_ppm", 0) > 1_000_000:
        problems.append("fee_ppm must be at most 1000000 (100%)")
    if "max_timeout_s" in out and out["max_timeout_s"] < 1:
        problems.append("max_timeout_s must be at least 1")
    if problems:
        raise PeergridError("; ".join(problems) + ".")
    return out


def create_market(session: Session, slug: str, **values) -> Market:
    """Define a market with its own queue.

    Raises:
        PeergridError: a field is wrong. Conflict: the slug is taken.
    """
    if not _SLUG.match(slug or ""):
        raise PeergridError("A market slug is 1 to 63 lowercase letters, digits or '-', like gpu-24gb.")
    if session.scalar(select(Market.id).where(Market.slug == slug)) is not None:
        raise Conflict(f"There is a market {slug!r} already.")
    fields = _checked(values)
    market = Market(slug=slug, queue=f"market.{slug}", name=fields.pop("name", slug), **fields)
    session.add(market)
    session.flush()
    return market


def update_market(session: Session, slug: str, **values) -> Market:
    market = session.scalar(select(Market).where(Market.slug == slug))
    if market is None:
        raise NotFound(f"There is no market {slug!r}.")
    for key, value in _checked(values).items():
        setattr(market, key, value)
    return market
