"""ProtocolError, and the checks every message's from_wire makes of the fields that arrived."""

from __future__ import annotations

from typing import Any

MAX_ID = 2**63 - 1


class ProtocolError(ValueError):
    """Raised when a message does not have the form its side of the protocol expects."""


def read_object(body: Any, what: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object.")
    return body


def read_whole(value: Any, name: str, *, low: int = 0, high: int = MAX_ID, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{name} must be a whole number from {low} to {high}.")
    return value


def read_ids(value: Any, problem: str, *, most: int | None = None) -> tuple[int, ...]:
    value = value or []
    if (
        not isinstance(value, list)
        or (most is not None and len(value) > most)
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_ID for v in value)
    ):
        raise ProtocolError(problem)
    return tuple(value)


def read_text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None
