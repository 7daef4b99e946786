"""Jobs: submit, read, follow logs, cancel."""

from __future__ import annotations

from flask import jsonify, request

from scheduler.errors import InvalidDefinition, Problem
from scheduler.jobs import job_for, job_logs, list_jobs, submit_job
from scheduler.orchestration import cancel_job
from web.api import bp
from web.api.serialize import iso, job_json
from web.auth import require_user
from web.db import core, db


def json_body() -> object:
    """The request's JSON body; a body that is not JSON is a problem at $."""
    body = request.get_json(silent=True)
    if body is None:
        raw = request.get_data(cache=True)
        if not raw.strip():
            raise InvalidDefinition([Problem("$", "The request has no body: send the job definition as JSON.")])
        raise InvalidDefinition([Problem("$", "The body is not valid JSON.")])
    return body


@bp.post("/jobs")
def create_job():
    user = require_user()
    document = json_body()
    job = submit_job(
        db(),
        user,
        document,
        market_slug=request.args.get("market") or None,
        default_timeout_s=core().settings.default_timeout_s,
    )
    return jsonify({"id": job.id, "state": job.state.value, "max_cost": job.max_cost}), 201


@bp.get("/jobs")
def jobs_index():
    user = require_user()
    page = list_jobs(db(), user, state=request.args.get("state") or None, page=request.args.get("page", 1, type=int))
    return jsonify(
        {
            "jobs": [job_json(j, with_ops=False) for j in page.jobs],
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
        }
    )


@bp.get("/jobs/<int:job_id>")
def job_show(job_id: int):
    return jsonify(job_json(job_for(db(), require_user(), job_id)))


@bp.get("/jobs/<int:job_id>/logs")
def job_log_lines(job_id: int):
    job = job_for(db(), require_user(), job_id)
    after = request.args.get("after", 0, type=int)
    rows = job_logs(db(), job, op_key=request.args.get("op") or None, after=after)
    lines = [
        {
            "id": line.id,
            "op": op_key,
            "attempt": line.attempt_id,
            "stream": line.stream,
            "text": line.text,
            "time": iso(line.logged_at),
        }
        for line, op_key in rows
    ]
    return jsonify(
        {"job": job.id, "state": job.state.value, "lines": lines, "next": lines[-1]["id"] if lines else after}
    )


@bp.post("/jobs/<int:job_id>/cancel")
def job_cancel(job_id: int):
    job = job_for(db(), require_user(), job_id)
    cancel_job(db(), job)
    return jsonify(job_json(job))
