"""/metrics for Prometheus."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from scheduler.metrics import StoreCollector
from web.auth import bearer_token
from web.db import core

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    token = core().settings.metrics_token
    if token:
        sent = bearer_token() or ""
        if not hmac.compare_digest(sent, token):
            abort(401, "Send the metrics token as 'Authorization: Bearer <token>'.")
    elif request.remote_addr not in ("127.0.0.1", "::1"):
        abort(403, "Set PEERGRID_METRICS_TOKEN to scrape /metrics from another machine.")
    registry = current_app.extensions.get("peergrid.metrics")
    if registry is None:
        registry = CollectorRegistry()
        registry.register(StoreCollector(core().sessions))
        current_app.extensions["peergrid.metrics"] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
