"""The node API: what worker agents call, authenticated by their node token."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request, send_file
from sqlalchemy import select

from scheduler.artifacts import ArtifactTooLarge, artifacts_root, input_for, job_artifacts, store_artifact
from scheduler.attempts import (
    LogRecord,
    LogsStored,
    append_logs,
    claim_attempt,
    finish_attempt,
    held_attempt,
    start_attempt,
)
from scheduler.errors import PeergridError, SecretMissing
from scheduler.models import Attempt, Market, Op
from scheduler.nodes import GpuReport, NodeReport, ended_jobs, record_report, register
from scheduler.secrets import masks, op_secret_values, reveal
from scheduler.states import ATTEMPT_HELD
from web.api import bp
from web.api.serialize import market_json
from web.auth import require_node
from web.params import MAX_INT, whole
from web.db import core, db


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise PeergridError("The body must be a JSON object.")
    return body


def _int(value: Any, name: str, default: int = 0, *, low: int = -(2**31), high: int = MAX_INT) -> int:
    if value is None:
        return default
    return whole(value, name, low=low, high=high)


# The most jobs one heartbeat may ask about, so the question stays one small query.
MAX_VOLUME_JOBS = 1000

_GPU_INTS = ("index", "memory_total_mb", "memory_free_mb", "utilization_pct", "temperature_c")
_GPU_TEXTS = {"uuid": 100, "name": 200, "compute_capability": 16, "driver_version": 32, "cuda_version": 16}


def _gpu_report(gpu: dict[str, Any], where: str) -> GpuReport:
    fields: dict[str, Any] = {}
    for name in _GPU_INTS:
        if gpu.get(name) is not None:
            fields[name] = _int(gpu[name], f"{where}.{name}", low=0, high=2**31 - 1)
    for name, limit in _GPU_TEXTS.items():
        if gpu.get(name) is not None:
            fields[name] = str(gpu[name])[:limit]
    return GpuReport(**fields)


def _report(body: dict[str, Any]) -> NodeReport:
    gpus = body.get("gpus") or []
    if not isinstance(gpus, list):
        raise PeergridError("gpus must be a list.")
    reports = []
    for i, gpu in enumerate(gpus):
        if not isinstance(gpu, dict) or not isinstance(gpu.get("uuid"), str) or not isinstance(gpu.get("name"), str):
            raise PeergridError(f"gpus[{i}] needs at least a uuid and a name.")
        reports.append(_gpu_report(gpu, f"gpus[{i}]"))
    running = _ids(body.get("running") or [], "running must be a list of attempt ids.")
    volume_jobs = _ids(
        body.get("volume_jobs") or [], f"volume_jobs must be a list of at most {MAX_VOLUME_JOBS} job ids.",
        most=MAX_VOLUME_JOBS,
    )
    return NodeReport(
        gpus=tuple(reports),
        simulated=bool(body.get("simulated", False)),
        gpu_message=str(body["gpu_message"])[:500] if body.get("gpu_message") else None,
        agent_version=str(body.get("agent_version") or "")[:50] or None,
        hostname=str(body.get("hostname") or "")[:255] or None,
        cpu_count=_int(body.get("cpu_count"), "cpu_count", low=0, high=1_000_000),
        memory_mb=_int(body.get("memory_mb"), "memory_mb", low=0, high=2**40),
        slots=_int(body.get("slots"), "slots", 1, low=1, high=1024),
        running=running,
        volume_jobs=volume_jobs,
    )


def _ids(value: Any, problem: str, *, most: int | None = None) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or (most is not None and len(value) > most)
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INT for v in value)
    ):
        raise PeergridError(problem)
    return tuple(value)


@bp.post("/node/register")
def node_register():
    node = require_node()
    register(db(), node, _report(_body()))
    settings = core().settings
    markets = db().scalars(select(Market).order_by(Market.id))
    return jsonify(
        {
            "node": {"id": node.id, "name": node.name, "state": node.state.value},
            "broker_url": settings.worker_broker_url,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "markets": [market_json(m) for m in markets],
        }
    )


@bp.post("/node/heartbeat")
def node_heartbeat():
    node = require_node()
    report = _report(_body())
    held = dict(
        db().execute(
            select(Attempt.id, Op.timeout_s)
            .join(Op, Op.id == Attempt.op_id)
            .where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD))
        ).all()
    )
    record_report(db(), node, report, holds=bool(held))
    # Attempts the node runs that are no longer its own (cancelled, or given to another node).
    stop = sorted(set(report.running) - set(held))
    return jsonify(
        {
            "state": node.state.value,
            "cancel": stop,
            "time_limits": {str(k): v for k, v in held.items()},
            # Ended jobs whose volumes the node may remove.
            "ended_jobs": ended_jobs(db(), node, report.volume_jobs),
        }
    )


@bp.post("/node/attempts/<int:attempt_id>/claim")
def attempt_claim(attempt_id: int):
    node = require_node()
    gpus = _body().get("gpus") or []
    if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
        raise PeergridError("gpus must be a list of GPU UUIDs.")
    attempt = claim_attempt(db(), node, attempt_id, gpus=gpus)
    op = attempt.op
    try:
        values = op_secret_values(db(), op)
    except SecretMissing as e:
        # The claim stands, so the failure is recorded: the op fails (or retries) as if its node
        # could not start it.
        finish_attempt(db(), node, attempt.id, exit_code=None, error=str(e))
        return jsonify({"attempt": None, "error": str(e)})
    parents = {a.op_id: a for a in job_artifacts(db(), op.job)}
    keys = {o.id: o.key for o in op.job.ops}
    inputs = [
        {"op": keys[op_id], "sha256": a.sha256, "size": a.size_bytes}
        for op_id, a in parents.items()
        if keys[op_id] in op.depends_on
    ]
    return jsonify(
        {
            "attempt": {
                "id": attempt.id,
                "number": attempt.number,
                "job_id": op.job_id,
                "op": op.key,
                "timeout_s": op.timeout_s,
                "market": op.market.slug,
                "gpus": list(attempt.gpus or []),
                # The only place secret values leave the store: to the node that won the claim.
                "spec": reveal(op.spec, values),
                "inputs": inputs,
                # What the node masks as *** in the lines it reports.
                "redact": masks(values.values()),
            }
        }
    )


@bp.post("/node/attempts/<int:attempt_id>/started")
def attempt_started(attempt_id: int):
    attempt = start_attempt(db(), require_node(), attempt_id)
    return jsonify({"id": attempt.id, "state": attempt.state.value})


@bp.post("/node/attempts/<int:attempt_id>/logs")
def attempt_logs(attempt_id: int):
    node = require_node()
    lines = _body().get("lines")
    if not isinstance(lines, list):
        raise PeergridError('Send {"lines": [{"seq", "stream", "text"}, ...]}.')
    outcome = _store_lines(node, attempt_id, lines)
    answer: dict[str, Any] = {"stored": outcome.stored}
    if outcome.full:
        answer["log_full"] = True
    return jsonify(answer)


def _store_lines(node, attempt_id: int, lines: list) -> LogsStored:
    settings = core().settings
    if len(lines) > settings.max_log_batch_lines:
        raise PeergridError(f"At most {settings.max_log_batch_lines} lines per batch.")
    records = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            raise PeergridError(f"lines[{i}] needs a text.")
        records.append(LogRecord(seq=_int(line.get("seq"), f"lines[{i}].seq", low=1), stream=str(line.get("stream", "stdout")), text=line["text"]))
    return append_logs(
        db(), node, attempt_id, records,
        max_line_chars=settings.max_log_line_chars, max_bytes=settings.max_log_bytes_per_attempt,
    )


@bp.post("/node/attempts/<int:attempt_id>/finished")
def attempt_finished(attempt_id: int):
    """How an attempt ended, with its last log lines: one request where a short op would need two."""
    node = require_node()
    body = _body()
    exit_code = body.get("exit_code")
    if exit_code is not None:
        exit_code = _int(exit_code, "exit_code", low=-(2**31), high=2**31 - 1)
    error = body.get("error")
    if error is not None:
        error = str(error)[:2000]
    if exit_code is None and error is None:
        raise PeergridError("Send the exit_code, or an error saying why the container could not run.")
    lines = body.get("lines") or []
    if not isinstance(lines, list):
        raise PeergridError('lines must be a list of {"seq", "stream", "text"}.')
    if lines:
        _store_lines(node, attempt_id, lines)
    attempt = finish_attempt(db(), node, attempt_id, exit_code=exit_code, error=error)
    return jsonify({"id": attempt.id, "state": attempt.state.value})


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


@bp.get("/node/attempts/<int:attempt_id>/inputs/<op_key>")
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
