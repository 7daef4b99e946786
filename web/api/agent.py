"""The node API: what worker agents call, authenticated by their node token.

Each route reads the message (protocol.messages, protocol.services), calls one scheduler function, and
sends its answer.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request, send_file

from protocol.messages import FinishedAnswer, FinishedReport, NodeReport, ReleaseReport, log_records
from protocol.services import HealthReport
from scheduler.artifacts import ArtifactTooLarge, artifacts_root, input_for, store_artifact
from scheduler.attempts import (
    LogLimits,
    append_logs,
    claim_work,
    held_attempt,
    next_work,
    release_attempt,
    report_finished,
    start_attempt,
)
from scheduler.errors import PeergridError
from scheduler.health import report_health
from scheduler.heartbeats import heard_node
from scheduler.nodes import heartbeat, register
from web.api import bp
from web.auth import node_token, require_node
from web.db import core, db


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise PeergridError("The body must be a JSON object.")
    return body


def _log_limits() -> LogLimits:
    settings = core().settings
    return LogLimits(max_line_chars=settings.max_log_line_chars, max_bytes=settings.max_log_bytes_per_attempt)


@bp.post("/node/register")
def node_register():
    settings = core().settings
    answer = register(
        db(), require_node(), NodeReport.from_wire(_body()),
        broker_url=settings.worker_broker_url, heartbeat_interval_s=settings.heartbeat_interval_s,
    )
    return jsonify(answer.to_wire())


@bp.post("/node/heartbeat")
def node_heartbeat():
    """The hottest route: read in one select, written only where the report changed something, the
    time it was heard batched by this process's hearing thread when it runs one (scheduler.last_seen)."""
    ears = current_app.extensions.get("peergrid.ears")
    answer = heartbeat(
        db(), heard_node(db(), node_token()), NodeReport.from_wire(_body()),
        heartbeat_interval_s=core().settings.heartbeat_interval_s, seen=ears.seen if ears is not None else None,
    )
    return jsonify(answer.to_wire())


@bp.post("/node/attempts/<int:attempt_id>/claim")
def attempt_claim(attempt_id: int):
    node = require_node()
    gpus = _body().get("gpus") or []
    if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
        raise PeergridError("gpus must be a list of GPU UUIDs.")
    answer = claim_work(db(), node, attempt_id, gpus=gpus, all_private=core().settings.private_endpoints)
    return jsonify(answer.to_wire())


@bp.post("/node/attempts/<int:attempt_id>/started")
def attempt_started(attempt_id: int):
    attempt = start_attempt(db(), require_node(), attempt_id)
    return jsonify({"id": attempt.id, "state": attempt.state.value})


@bp.post("/node/attempts/<int:attempt_id>/logs")
def attempt_logs(attempt_id: int):
    node = require_node()
    records = log_records(_body().get("lines"), most=core().settings.max_log_batch_lines)
    return jsonify(append_logs(db(), node, attempt_id, records, limits=_log_limits()).to_wire())


@bp.post("/node/attempts/<int:attempt_id>/finished")
def attempt_finished(attempt_id: int):
    """How an attempt ended, with its last log lines: one request where a short op would need two."""
    node = require_node()
    report = FinishedReport.from_wire(_body(), most_lines=core().settings.max_log_batch_lines)
    settings = core().settings
    attempt = report_finished(db(), node, attempt_id, report, limits=_log_limits())
    # The node's next work, placed and claimed in the same transaction, so its GPUs start again at once.
    orders = next_work(db(), node, half_life_s=settings.fair_share_half_life_s,
                       all_private=settings.private_endpoints) if report.more else []
    return jsonify(FinishedAnswer(id=attempt.id, state=attempt.state.value, next=tuple(orders)).to_wire())


@bp.post("/node/attempts/<int:attempt_id>/release")
def attempt_release(attempt_id: int):
    """An attempt given back unfinished, its worker stopping: offered again at once, not billed."""
    node = require_node()
    report = ReleaseReport.from_wire(_body(), most_lines=core().settings.max_log_batch_lines)
    attempt = release_attempt(db(), node, attempt_id, report, limits=_log_limits())
    return jsonify({"id": attempt.id, "state": attempt.state.value})


@bp.post("/node/attempts/<int:attempt_id>/health")
def attempt_health(attempt_id: int):
    """A service attempt's health checks and in-place restarts, sent by its node when they change."""
    attempt = report_health(db(), require_node(), attempt_id, HealthReport.from_wire(_body()))
    return jsonify({"id": attempt.id, "restarts": attempt.restarts, "ready": attempt.ready_at is not None})


@bp.put("/node/attempts/<int:attempt_id>/artifact")
def attempt_artifact(attempt_id: int):
    """Receive the attempt's output folder as a .tar.gz body, checksummed by X-Checksum-Sha256."""
    node = require_node()
    settings = core().settings
    attempt = held_attempt(db(), node, attempt_id)
    if not attempt.op.spec.get("output"):
        raise PeergridError(f"Op {attempt.op.key} has no output folder to upload.")
    if (request.content_length or 0) > settings.max_artifact_bytes:
        raise ArtifactTooLarge(
            f"The output of {attempt.op.key} is larger than the {settings.max_artifact_bytes // (1024 * 1024)} MB limit."
        )
    # Past the general body limit, up to the artifact limit; a stream without a length is cut there too.
    request.max_content_length = settings.max_artifact_bytes
    artifact = store_artifact(
        db(),
        attempt,
        request.stream,
        data_dir=settings.data_dir,
        max_bytes=settings.max_artifact_bytes,
        expected_sha256=request.headers.get("X-Checksum-Sha256"),
    )
    return jsonify({"id": artifact.id, "size": artifact.size_bytes, "sha256": artifact.sha256}), 201


@bp.get("/node/attempts/<int:attempt_id>/inputs/<op_id:op_key>", merge_slashes=False)
def attempt_input(attempt_id: int, op_key: str):
    """A parent op's output, for the node running a dependent attempt."""
    node = require_node()
    attempt = held_attempt(db(), node, attempt_id, lock=False)
    artifact = input_for(db(), node, attempt, op_key)
    return send_file(
        artifacts_root(core().settings.data_dir) / artifact.path,
        mimetype="application/gzip",
        download_name=f"{op_key}.tar.gz",
        etag=artifact.sha256,
    )
