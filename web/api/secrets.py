"""Secrets, as their owner manages them: names and dates only ever come back, never values."""

from __future__ import annotations

from flask import jsonify, request

from scheduler.errors import PeergridError
from scheduler.models import Secret
from scheduler.secrets import check_name, delete_secret, secrets_of, set_secret
from web.api import bp
from web.api.serialize import iso
from web.auth import require_user
from web.db import db


def secret_json(secret: Secret) -> dict:
    return {"name": secret.name, "created_at": iso(secret.created_at), "updated_at": iso(secret.updated_at)}


@bp.get("/secrets")
def secrets_index():
    return jsonify({"secrets": [secret_json(s) for s in secrets_of(db(), require_user())]})


@bp.put("/secrets/<name>")
def secret_put(name: str):
    """Create a secret or replace its value."""
    user = require_user()
    check_name(name)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("value"), str):
        raise PeergridError('Send {"value": "..."}: the secret\'s value, as a string.')
    secret, created = set_secret(db(), user, name, body["value"])
    return jsonify(secret_json(secret)), 201 if created else 200


@bp.delete("/secrets/<name>")
def secret_delete(name: str):
    delete_secret(db(), require_user(), name)
    return "", 204
