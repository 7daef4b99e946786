"""Jobs: submit, read, follow logs, cancel."""

from __future__ import annotations

from flask import current_app, jsonify, request, send_file, url_for

from protocol.names import op_slug
from scheduler.array_spec import parse_array_spec
from scheduler.errors import InvalidDefinition, PeergridError, Problem
from scheduler.jobs import job_for, job_logs, list_jobs, plan_job, submit_job, submit_once
from scheduler.artifacts import artifact_of_op, artifacts_root, job_artifacts
from scheduler.events import job_events
from scheduler.orchestration import cancel_job, extend_job
from scheduler.priorities import read_priority
from web.api import arrays, bp
from web.api.serialize import iso, job_json
from web.bodies import NestedTooDeep
from web.auth import require_user
from web.params import query_int, whole
from web.db import core, db


def json_body() -> object:
    """The request's JSON body; a body that is not JSON is a problem at $, one nested too deep to
    read a bad request."""
    body = request.get_json(silent=True)
    if body is None:
        raw = request.get_data(cache=True)
        if not raw.strip():
            raise InvalidDefinition([Problem("$", "The request has no body: send the job definition as JSON.")])
        try:
            current_app.json.loads(raw)
        except NestedTooDeep as e:
            raise PeergridError(str(e)) from None
        except ValueError:
            pass
        raise InvalidDefinition([Problem("$", "The body is not valid JSON.")])
    return body


@bp.post("/jobs")
def create_job():
    """Submit a job (with ?array=SPEC, an array of them); with an Idempotency-Key, a repeat answers
    what the first made (200)."""
    user = require_user()
    document = json_body()
    settings = core().settings
    options = dict(
        market_slug=request.args.get("market") or None,
        default_timeout_s=settings.default_timeout_s,
        max_ops=settings.max_ops_per_job,
        priority=read_priority(request.args.get("priority")),
        priorities=settings.priority_bounds,
    )
    if "array" in request.args:  # many jobs of the definition, each with its index
        return arrays.submit(user, document, options)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        job, status = submit_job(db(), user, document, **options), 201
    else:
        submission = submit_once(db(), user, document, key=key, **options)
        job, status = submission.job, 200 if submission.repeated else 201
    return jsonify({"id": job.id, "state": job.state.value, "max_cost": job.max_cost}), status


@bp.post("/jobs/validate")
def validate_job():
    """Check and plan a definition as a submit would (with ?array=SPEC, as an array's); nothing is
    stored and nothing reserved."""
    user = require_user()
    settings = core().settings
    array = request.args.get("array")
    plan = plan_job(
        db(), user, json_body(), market_slug=request.args.get("market") or None,
        default_timeout_s=settings.default_timeout_s, max_ops=settings.max_ops_per_job,
        priority=read_priority(request.args.get("priority")), priorities=settings.priority_bounds,
        array_size=None if array is None else parse_array_spec(array, max_size=settings.max_array_size).size,
    )
    return jsonify({
        "valid": plan.valid,
        "errors": [p.as_dict() for p in plan.problems],
        "warnings": [w.as_dict() for w in plan.warnings],
        "ops": [{"id": op.definition.key, "market": op.market.slug, "max_cost": op.max_cost} for op in plan.ops],
        "max_cost": plan.max_cost,
        "available": plan.available,
    })


@bp.get("/jobs")
def jobs_index():
    user = require_user()
    page = list_jobs(
        db(), user, state=request.args.get("state") or None, page=query_int("page", 1, low=1, high=10**6),
        with_op_keys=False,
    )
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
    job = job_for(db(), require_user(), job_id)
    return jsonify(job_json(job, events=job_events(db(), job)))


@bp.get("/jobs/<int:job_id>/logs")
def job_log_lines(job_id: int):
    job = job_for(db(), require_user(), job_id)
    after = query_int("after", 0)
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
    return jsonify(job_json(job, events=job_events(db(), job)))


@bp.post("/jobs/<int:job_id>/extend")
def job_extend(job_id: int):
    job = job_for(db(), require_user(), job_id)
    body = request.get_json(silent=True)
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise PeergridError('Send {"seconds": N}: how much longer the job\'s ops may run.')
    whole(seconds, "seconds", low=1, high=10**9)
    extend_job(db(), job, seconds)
    return jsonify(job_json(job, events=job_events(db(), job)))


@bp.get("/jobs/<int:job_id>/artifacts")
def job_artifact_list(job_id: int):
    job = job_for(db(), require_user(), job_id)
    keys = {op.id: op.key for op in job.ops}
    return jsonify(
        {
            "artifacts": [
                {
                    "op": keys[a.op_id],
                    "attempt": a.attempt_id,
                    "size": a.size_bytes,
                    "sha256": a.sha256,
                    "created_at": iso(a.created_at),
                    "url": url_for("api.job_artifact_download", job_id=job.id, op_key=keys[a.op_id]),
                }
                for a in job_artifacts(db(), job)
            ]
        }
    )


# An op's id may hold '/' and be '..' (Nosana allows any text without whitespace): see web.OpId.
@bp.get("/jobs/<int:job_id>/artifacts/<op_id:op_key>", merge_slashes=False)
def job_artifact_download(job_id: int, op_key: str):
    job = job_for(db(), require_user(), job_id)
    artifact = artifact_of_op(db(), job, op_key)
    return send_file(
        artifacts_root(core().settings.data_dir) / artifact.path,
        mimetype="application/gzip",
        as_attachment=True,
        download_name=f"job-{job.id}-{op_slug(op_key)}.tar.gz",
        etag=artifact.sha256,
    )
