"""Reading numbers from requests within what the store can hold."""

from __future__ import annotations

from typing import Any

from flask import request

from scheduler.errors import PeergridError

MAX_INT = 2**63 - 1


def whole(value: Any, name: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """A whole number between low and high, or a PeergridError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PeergridError(f"{name} must be a whole number from {low} to {high}.")
    return value


def query_int(name: str, default: int | None = None, *, low: int = 0, high: int = MAX_INT) -> int | None:
    """A whole-number query parameter; a missing or unusable one gives the default."""
    value = request.args.get(name, type=int)
    if value is None or not low <= value <= high:
        return default
    return value
