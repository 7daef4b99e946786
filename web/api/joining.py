"""Join tokens, as their owners manage them, and the one call a join token may make: join as a new node."""

from __future__ import annotations

from flask import jsonify, request

from protocol.messages import Joined, JoinRequest
from scheduler.errors import PeergridError
from scheduler.joining import create_join_token, join, join_token_for, join_tokens_of, revoke_join_token
from scheduler.models import JoinToken
from web.api import bp
from web.api.serialize import iso
from web.auth import require_join_token, require_user
from web.db import db


def join_token_json(row: JoinToken, nodes: int | None = None) -> dict:
    body = {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "revoked_at": iso(row.revoked_at),
    }
    if nodes is not None:
        body["nodes"] = nodes
    return body


@bp.post("/join-tokens")
def join_tokens_create():
    """Make a join token; the token itself is in the answer, this once. The body's name is optional."""
    user = require_user()
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict) or not isinstance(body.get("name", ""), str):
        raise PeergridError('Send {"name": "..."}: a label for the join token, as a string (or send no body).')
    row, token = create_join_token(db(), user, body.get("name", ""))
    return jsonify({**join_token_json(row), "token": token}), 201


@bp.get("/join-tokens")
def join_tokens_index():
    rows = join_tokens_of(db(), require_user())
    return jsonify({"join_tokens": [join_token_json(row, nodes) for row, nodes in rows]})


@bp.delete("/join-tokens/<int:token_id>")
def join_tokens_revoke(token_id: int):
    """Revoke a join token: it makes no more nodes; those it made keep working."""
    row = revoke_join_token(db(), require_user(), token_id)
    return jsonify(join_token_json(row))


@bp.post("/nodes/join")
def nodes_join():
    """A worker joins with a join token and gets a node of the token's owner, with its node token, once."""
    token = require_join_token()
    join_token_for(db(), token)  # a wrong token is told so, whatever it sent
    asked = JoinRequest.from_wire(request.get_json(silent=True))
    node, node_token = join(db(), token, asked.name)
    return jsonify(Joined(node_id=node.id, node_name=node.name, token=node_token).to_wire()), 201
