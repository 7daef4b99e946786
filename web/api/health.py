"""Liveness for probes and `peergrid up`."""

from __future__ import annotations

from flask import jsonify
from sqlalchemy import text

from web.api import bp
from web.db import db


@bp.get("/health")
def health():
    """Whether the web app answers and reaches its store; needs no token."""
    db().execute(text("SELECT 1"))
    return jsonify({"ok": True})
