"""Amounts of credits: integer micro-credits in the store and in code, decimals only for people."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from scheduler.errors import PeergridError

MICRO = 1_000_000


def credits(micro: int) -> str:
    """Micro-credits as credits, for sentences: 1500000 → '1.5'."""
    whole, frac = divmod(abs(micro), MICRO)
    text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
    return ("-" if micro < 0 else "") + text


def parse_credits(text: str) -> int:
    """Credits written by a person ('2.5') as micro-credits, exactly; refuses more than six decimals.

    Raises:
        PeergridError: not a number of credits, or finer than one micro-credit.
    """
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise PeergridError(f"{text!r} is not an amount of credits.") from None
    if not value.is_finite():
        raise PeergridError(f"{text!r} is not an amount of credits.")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise PeergridError("Credits have at most six decimals (1 micro-credit).")
    return int(micro)
