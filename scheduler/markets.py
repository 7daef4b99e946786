"""Markets as admins define them: their fields, checked, and their queues.

Which market an op goes to, and what it costs there, is scheduler.placement's.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.messages import MarketSpec, market_queue
from scheduler.errors import Conflict, NotFound, PeergridError
from scheduler.models import Market


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
    market = Market(slug=slug, queue=market_queue(slug), name=fields.pop("name", slug), **fields)
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


def market_spec(market: Market) -> MarketSpec:
    """The market as workers are told of it."""
    return MarketSpec(
        slug=market.slug,
        queue=market.queue,
        gpu_count=market.gpu_count,
        min_vram_mb=market.min_vram_mb,
        gpu_models=tuple(market.gpu_models or ()),
        min_compute_capability=market.min_compute_capability,
        min_cuda_version=market.min_cuda_version,
    )
