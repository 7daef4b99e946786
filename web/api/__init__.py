"""The REST API, /api/v1: jobs, nodes and markets for people; /api/v1/node for worker agents."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from web.api import admin, agent, arrays, health, joining, jobs, ledger, markets, nodes, openapi, quotas, secrets  # noqa: E402,F401  (routes register on bp)
