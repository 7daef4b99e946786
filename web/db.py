"""The request's database session."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session

from scheduler.core import Core


def core() -> Core:
    return current_app.extensions["peergrid"]


def db() -> Session:
    """The request's session, opened on first use and committed when the request ends well.

    It ends well when its answer is not an error and it flashed no refusal (category "error").
    """
    if "db" not in g:
        g.db = core().sessions()
    return g.db
