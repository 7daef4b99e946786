"""Nodes, as their owners see them: create one (its token shown once), list them."""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from scheduler.errors import NotFound, PeergridError
from scheduler.models import Node
from scheduler.nodes import create_node, set_draining
from web.api import bp
from web.api.serialize import node_json
from web.auth import require_user
from web.db import db


@bp.post("/nodes")
def nodes_create():
    user = require_user()
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise PeergridError('Send {"name": "..."} to name the node.')
    node, token = create_node(db(), user, body["name"])
    return jsonify({"id": node.id, "name": node.name, "token": token}), 201


@bp.get("/nodes")
def nodes_index():
    user = require_user()
    query = select(Node).options(selectinload(Node.gpus)).where(Node.removed_at.is_(None)).order_by(Node.id)
    if not user.is_admin:
        query = query.where(Node.owner_id == user.id)
    return jsonify({"nodes": [node_json(n) for n in db().scalars(query)]})


@bp.post("/nodes/<int:node_id>/drain")
def nodes_drain(node_id: int):
    """Drain a node (`{"drain": false}` takes it back into service); its owner or an admin."""
    user = require_user()
    node = db().get(Node, node_id)
    if node is None or node.removed_at is not None or (node.owner_id != user.id and not user.is_admin):
        raise NotFound(f"There is no node {node_id}.")
    body = request.get_json(silent=True) or {}
    set_draining(db(), node, bool(body.get("drain", True)))
    return jsonify(node_json(node))
