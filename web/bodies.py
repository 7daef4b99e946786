"""Reading JSON bodies: one nested deeper than Python's parser goes is refused, not a crash."""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider


class NestedTooDeep(ValueError):
    """Raised when a JSON text nests deeper than the parser can follow."""


class BodyJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body too deep to parse read as invalid JSON (a ValueError), so that
    `request.get_json(silent=True)` answers None for it as for any other unreadable body."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise NestedTooDeep(
                "The body nests deeper than this server reads: send JSON of at most a few dozen levels."
            ) from None
