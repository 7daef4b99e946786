"""Job arrays: submit one (POST /jobs?array=SPEC, in web.api.jobs), read its counts, cancel it."""

from __future__ import annotations

from flask import jsonify, request

from scheduler.array_spec import parse_array_spec
from scheduler.arrays import array_for, array_job_ids, array_status, cancel_array, submit_array
from web.api import bp
from web.auth import require_user
from web.db import core, db


def submit(user, document: object, options: dict):
    """Answer a submit with ?array=SPEC: 201 with the array (200 for a repeat of an Idempotency-Key)."""
    settings = core().settings
    spec = parse_array_spec(request.args.get("array", ""), max_size=settings.max_array_size)
    submission = submit_array(
        db(), user, document, spec, max_array_ops=settings.max_array_ops,
        key=request.headers.get("Idempotency-Key"), **options,
    )
    array = submission.array
    status = array_status(db(), array) if submission.repeated else None
    return jsonify({
        "id": array.id, "size": array.size, "max_running": array.max_running,
        "state": status.state if status else "queued", "max_cost": submission.max_cost,
    }), 200 if submission.repeated else 201


def array_json(array) -> dict:
    status = array_status(db(), array)
    return {
        "id": array.id,
        "size": array.size,
        "max_running": array.max_running,
        "state": status.state,
        "counts": status.counts,
        "done": status.done,
        "progress": status.progress,
        "max_cost": status.max_cost,
        "cost": status.cost,
        "jobs": array_job_ids(db(), array),
    }


@bp.get("/arrays/<int:array_id>")
def array_show(array_id: int):
    return jsonify(array_json(array_for(db(), require_user(), array_id)))


@bp.post("/arrays/<int:array_id>/cancel")
def array_cancel(array_id: int):
    array = array_for(db(), require_user(), array_id)
    cancel_array(db(), array)
    db().flush()
    return jsonify(array_json(array))
