"""Placement passes: the scheduler decides which node runs each waiting attempt.

Anything that adds or frees work (a submit, an attempt's end, a node joining or changing) asks for a
pass with want_pass(session); the leading scheduler runs one soon after that transaction commits,
and every second regardless.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

_WANTED = "peergrid.pass_wanted"


def want_pass(session: Session) -> None:
    """Ask for a placement pass once this session's transaction commits."""
    session.info[_WANTED] = True


def take_wanted(session: Session) -> bool:
    """Whether the transaction asked for a pass; forgets it."""
    return bool(session.info.pop(_WANTED, False))
