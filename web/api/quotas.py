"""What admins set per person to keep the queue fair: quotas, priority caps, and a waiting job's priority."""

from __future__ import annotations

from flask import jsonify, request

from scheduler.accounts import user_named
from scheduler.errors import PeergridError
from scheduler.events import job_events
from scheduler.jobs import job_for
from scheduler.models import User
from scheduler.priorities import priority_cap, read_priority, set_job_priority, set_max_priority
from scheduler.quotas import QuotaView, clear_quota, list_quotas, market_named, set_quota
from web.api import bp
from web.api.serialize import iso, job_json
from web.auth import require_admin
from web.db import core, db

QUOTA_FIELDS = {"market", "max_running_gpus", "max_waiting_jobs"}


def quota_json(quota: QuotaView) -> dict:
    return {
        "user": quota.email,
        "user_id": quota.user_id,
        "market": quota.market,
        "max_running_gpus": quota.max_running_gpus,
        "max_waiting_jobs": quota.max_waiting_jobs,
        "updated_at": iso(quota.updated_at),
    }


def limits_json(user: User) -> dict:
    """A person's limits: their priority cap (their own, and the one that applies) and quotas."""
    return {
        "user": {"id": user.id, "email": user.email, "is_admin": user.is_admin},
        "max_priority": user.max_priority,
        "priority_cap": priority_cap(user, core().settings.priority_bounds),
        "quotas": [quota_json(q) for q in list_quotas(db(), user)],
    }


def _object(what: str) -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise PeergridError(f"Send a JSON object: {what}.")
    return body


@bp.get("/admin/quotas")
def admin_quotas():
    require_admin()
    return jsonify({"quotas": [quota_json(q) for q in list_quotas(db())]})


@bp.get("/admin/users/<user_ref>/quotas")
def admin_user_limits(user_ref: str):
    require_admin()
    return jsonify(limits_json(user_named(db(), user_ref)))


@bp.put("/admin/users/<user_ref>/quota")
def admin_quota_put(user_ref: str):
    """Set a person's quota on one market (or on every market, for "market": null); a limit left out or
    null does not apply, and with neither the quota is removed."""
    require_admin()
    user = user_named(db(), user_ref)
    shape = '{"market": SLUG or null, "max_running_gpus": N or null, "max_waiting_jobs": N or null}'
    body = _object(shape)
    unknown = sorted(set(body) - QUOTA_FIELDS)
    if unknown:
        raise PeergridError(f"Unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: send {shape}.")
    slug = body.get("market")
    if slug is not None and not isinstance(slug, str):
        raise PeergridError(f"market is a market's slug, or null for every market: send {shape}.")
    set_quota(db(), user, market_named(db(), slug or None), max_running_gpus=body.get("max_running_gpus"),
              max_waiting_jobs=body.get("max_waiting_jobs"))
    return jsonify(limits_json(user))


@bp.delete("/admin/users/<user_ref>/quota")
def admin_quota_delete(user_ref: str):
    """Remove a person's quota on ?market=SLUG, or their every-market one without it."""
    require_admin()
    user = user_named(db(), user_ref)
    removed = clear_quota(db(), user, market_named(db(), request.args.get("market") or None))
    return jsonify({**limits_json(user), "removed": removed})


@bp.put("/admin/users/<user_ref>/max-priority")
def admin_max_priority(user_ref: str):
    """Set the highest priority a person may ask for; null gives them the cluster's default again."""
    require_admin()
    user = user_named(db(), user_ref)
    body = _object('{"max_priority": N, or null for the cluster\'s default}')
    if "max_priority" not in body:
        raise PeergridError('Send {"max_priority": N}, or {"max_priority": null} for the cluster\'s default.')
    set_max_priority(db(), user, body["max_priority"])
    return jsonify(limits_json(user))


@bp.post("/admin/jobs/<int:job_id>/priority")
def admin_job_priority(job_id: int):
    """Change a waiting job's priority, past its owner's cap if need be."""
    admin = require_admin()
    body = _object('{"priority": N}')
    if "priority" not in body or body["priority"] is None:
        raise PeergridError('Send {"priority": N}: higher runs first.')
    job = job_for(db(), admin, job_id)
    set_job_priority(db(), job, read_priority(body["priority"]))
    return jsonify(job_json(job, events=job_events(db(), job)))
