"""Submitting from the dashboard: a gallery of templates, each labelled with what it needs (GPUs,
GPU memory, image, the ports it serves), a JSON editor checked as you type, the cost estimate and
balance before confirming."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from protocol.gpus import gb_text
from scheduler import ledger
from scheduler.errors import InvalidDefinition, NoMarket, PeergridError, PriorityRefused, Problem
from scheduler.jobdef import parse_definition
from scheduler.jobs import check_definition, submit_job
from scheduler.models import Market
from scheduler.placement import choose_market, plan_ops, requirements_for
from scheduler.priorities import check_priority, priority_cap, read_priority
from scheduler.quotas import waiting_quota_problem
from web.auth import check_csrf, session_user
from web.dashboard import login_required
from web.db import core, db

bp = Blueprint("submit", __name__)
GALLERY = Path(__file__).parent / "gallery"


@lru_cache(maxsize=1)
def gallery() -> list[dict]:
    entries = json.loads((GALLERY / "index.json").read_text())
    for entry in entries:
        entry["slug"] = entry["file"].removesuffix(".json")
        document = json.loads((GALLERY / entry["file"]).read_text())
        entry["text"] = json.dumps(document, indent=2)
        entry["needs"] = needs(document)
    return entries


def needs(document: dict) -> dict:
    """What a template asks of the machine that runs it, read from its definition as the scheduler
    reads it: the most GPUs and GPU memory any op needs, its images, and the ports it serves."""
    definition = parse_definition(document)
    wants = [requirements_for(op, definition) for op in definition.ops]
    gpus = max((w.gpu_count for w in wants), default=0)
    vram_mb = max((w.min_vram_mb for w in wants), default=0)
    ports = sorted({p.port for op in definition.ops for p in op.exposed})
    images = list(dict.fromkeys(op.image for op in definition.ops if op.image))
    return {"gpus": gpus, "vram_mb": vram_mb, "vram_gb": gb_text(vram_mb) if vram_mb else None,
            "images": images, "ports": ports, "service": bool(ports)}


def market_for(entry: dict, markets: list) -> Market | None:
    """The market the template's GPU op goes to here (the one that sets the GPU memory it gets)."""
    definition = parse_definition(json.loads(entry["text"]))
    gpu_ops = [op for op in definition.ops if op.gpu_count]
    if not gpu_ops:
        return None
    try:
        return choose_market(markets, requirements_for(gpu_ops[0], definition))
    except NoMarket:
        return None


def labelled() -> list[dict]:
    """The gallery, each entry with the market its GPU op would go to on this server."""
    markets = list(db().scalars(select(Market)))
    return [{**entry, "market": market_for(entry, markets)} for entry in gallery()]


def check(text: str, market: str | None, priority: object = None) -> dict:
    """What the editor shows: every problem by path, or the plan with its cost and the balance."""
    user = session_user()
    available = ledger.balances(db(), user.id)["available"]
    try:
        check_priority(user, read_priority(priority), core().settings.priority_bounds)
    except PriorityRefused as e:
        return {"valid": False, "available": available, "errors": [{"path": "priority", "message": str(e)}]}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        return {"valid": False, "available": available,
                "errors": [{"path": "$", "message": f"Not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."}]}
    except RecursionError:
        return {"valid": False, "available": available,
                "errors": [{"path": "$", "message": "The definition nests deeper than this server reads; flatten it."}]}
    try:
        definition = check_definition(db(), user, document, max_ops=core().settings.max_ops_per_job)
        planned = plan_ops(db(), definition, market_slug=market, default_timeout_s=core().settings.default_timeout_s)
    except InvalidDefinition as e:
        return {"valid": False, "available": available, "errors": [p.as_dict() for p in e.problems]}
    except NoMarket as e:
        return {"valid": False, "available": available, "errors": [{"path": "$.ops", "message": str(e)}]}
    total = sum(p.max_cost for p in planned)
    over = waiting_quota_problem(db(), user, {p.market.id: p.market for p in planned}.values())
    if over is not None:
        return {"valid": False, "available": available, "errors": [{"path": "$", "message": str(over)}]}
    return {
        "valid": True,
        "available": available,
        "max_cost": total,
        "affordable": total <= available,
        "warnings": [w.as_dict() for w in definition.warnings],
        "ops": [{"id": p.definition.key, "market": p.market.slug, "timeout": p.timeout_s,
                 "tries": p.definition.max_attempts, "max_cost": p.max_cost} for p in planned],
    }


@bp.get("/submit")
@login_required
def submit_page():
    chosen = request.args.get("template") or "nosana-hello-world"
    entries = labelled()
    entry = next((g for g in entries if g["slug"] == chosen), entries[0])
    return render_template("submit.html", gallery=entries, chosen=entry, text=entry["text"], result=None,
                           priority="", priority_cap=_cap())


@bp.post("/submit/check")
@login_required
def submit_check():
    # A JSON call from the editor: the session's CSRF token travels in a header.
    check_csrf(header=True)
    body = request.get_json(silent=True) or {}
    return jsonify(check(str(body.get("definition", "")), body.get("market") or None, body.get("priority")))


@bp.post("/submit")
@login_required
def submit_post():
    check_csrf()
    text = request.form.get("definition", "")
    market = request.form.get("market") or None
    priority = request.form.get("priority", "")
    result = check(text, market, priority)
    if result["valid"]:
        try:
            job = submit_job(db(), session_user(), json.loads(text), market_slug=market,
                             default_timeout_s=core().settings.default_timeout_s,
                             max_ops=core().settings.max_ops_per_job, priority=read_priority(priority),
                             priorities=core().settings.priority_bounds)
        except ledger.InsufficientCredits as e:
            result = {**result, "valid": False, "errors": [{"path": "$", "message": str(e)}]}
        except (InvalidDefinition, NoMarket, PeergridError) as e:
            problems = e.problems if isinstance(e, InvalidDefinition) else [Problem("$", str(e))]
            result = {**result, "valid": False, "errors": [p.as_dict() for p in problems]}
        else:
            return redirect(url_for("dashboard.job", job_id=job.id))
    return render_template("submit.html", gallery=labelled(), chosen=None, text=text, result=result,
                           priority=priority, priority_cap=_cap()), 422


def _cap() -> int:
    return priority_cap(session_user(), core().settings.priority_bounds)
