"""How an op id, which may be any text without whitespace (Nosana's rule), is written where only a
few characters are allowed: Docker names, host names, file names and URL paths. One rule, used by
the server, the worker and the CLI alike."""

from __future__ import annotations

import hashlib
import re

# Docker names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*; a DNS label [a-z0-9-], at most 63 characters.
# A slug keeps to what both allow.
SLUG_LENGTH = 63
_HASH_LENGTH = 8
_UNSAFE = re.compile(r"[^a-z0-9]+")


def op_slug(op_id: str) -> str:
    """The op id as a DNS label that is also a valid Docker name and file name.

    An id already of that form is itself; any other gets what is left of it plus a short hash of
    the whole id, so two ids that differ only in what had to change still differ.
    """
    if len(op_id) <= SLUG_LENGTH and re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", op_id):
        return op_id
    digest = hashlib.sha256(op_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    readable = _UNSAFE.sub("-", op_id.lower()).strip("-")[: SLUG_LENGTH - _HASH_LENGTH - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else f"op-{digest}"

