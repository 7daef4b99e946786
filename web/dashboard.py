"""The dashboard: sign in, see your jobs, open one and read its logs as they arrive."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import wraps
from urllib.parse import urlparse

import secrets

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from scheduler import ledger, overview, queue_view
from scheduler.accounts import authenticate
from scheduler.artifacts import job_artifacts
from scheduler.endpoint_access import hop_url
from scheduler.endpoints import attempt_endpoints, endpoint_url
from scheduler.errors import AuthenticationError, NotFound, PeergridError
from scheduler.events import job_events
from scheduler.jobs import job_for, job_logs, list_jobs
from scheduler.joining import create_join_token, join_tokens_of, revoke_join_token
from scheduler.ledger_views import earnings_by_node, movements, payouts
from scheduler.models import Endpoint, Job, Node, Op
from scheduler.nodes import create_node, remove_node, set_draining
from scheduler.orchestration import cancel_job, extend_job
from scheduler.states import JobState, utcnow
from web.api.serialize import endpoint_json
from web.auth import check_csrf, csrf_token, session_user
from web.ratelimit import Attempts
from web.db import core, db

bp = Blueprint("dashboard", __name__)
# Ten failed tries per address and account every five minutes.
LOGIN_ATTEMPTS = Attempts(limit=10, window_s=300)


@bp.app_context_processor
def _template_globals():
    user = session_user()
    return {
        "current_user": user,
        "csrf_token": csrf_token,
        "available": ledger.balances(db(), user.id)["available"] if user else 0,
        "credits": ledger.credits,
        "once": lambda: secrets.token_hex(8),
    }


@bp.app_template_filter("clock")
def _clock(value: datetime) -> str:
    """A time as a queue shows it: 14:05 when it falls today (UTC), else with its date."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%H:%M" if value.date() == utcnow().date() else "%Y-%m-%d %H:%M")


def login_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if session_user() is None:
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    # Only same-site paths, so the login form cannot bounce a person elsewhere.
    if target and target.startswith("/") and not target.startswith("//") and not urlparse(target).netloc:
        return target
    return url_for("dashboard.jobs")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    email = ""
    if request.method == "POST":
        check_csrf()
        email = request.form.get("email", "")
        key = f"{request.remote_addr}|{email.strip().lower()}"
        wait = LOGIN_ATTEMPTS.wait_needed(key)
        if wait:
            message = f"Too many sign-in attempts; try again in {int(wait) + 1} seconds."
            return render_template("login.html", error=message, email=email), 429
        try:
            user = authenticate(db(), email, request.form.get("password", ""))
        except AuthenticationError as e:
            LOGIN_ATTEMPTS.failed(key)
            error = str(e)
        else:
            LOGIN_ATTEMPTS.succeeded(key)
            session.clear()
            session["user_id"] = user.id
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error, email=email), (401 if error else 200)


@bp.post("/logout")
def logout():
    check_csrf()
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@login_required
def home():
    user = session_user()
    gpus, cpu_nodes = overview.capacity_online(db())
    return render_template(
        "overview.html",
        gpus=gpus,
        cpu_nodes=cpu_nodes,
        queues=overview.queue_depth(db()),
        in_line=queue_view.first_in_line(db()),
        reservations=queue_view.reservations(db()),
        recent=list_jobs(db(), user, page=1).jobs[:8],
        usage=overview.gpu_utilisation(db()),
        balances=ledger.balances(db(), user.id),
    )


@bp.get("/jobs")
@login_required
def jobs():
    state = request.args.get("state") or None
    if state not in {s.value for s in JobState}:
        state = None
    page = list_jobs(db(), session_user(), state=state, page=request.args.get("page", 1, type=int))
    return render_template("jobs.html", page=page, state=state, states=[s.value for s in JobState])


@bp.get("/jobs/<int:job_id>")
@login_required
def job(job_id: int):
    job = job_for(db(), session_user(), job_id)
    lines = job_logs(db(), job)
    keys = {op.id: op.key for op in job.ops}
    return render_template(
        "job.html",
        job=job,
        lines=lines,
        cursor=lines[-1][0].id if lines else 0,
        events=job_events(db(), job),
        artifacts=[(keys[a.op_id], a) for a in job_artifacts(db(), job)],
        op_keys=keys,
        endpoints=[(op.key, _with_link(job, e)) for op in job.ops if op.attempts
                   for e in attempt_endpoints(db(), op.attempts[-1])],
        # Each op's last attempt, whose restarts the endpoints table shows.
        services={op.key: op.attempts[-1] for op in job.ops if op.attempts},
        # Why each waiting op waits, by its key.
        waiting={op.key: w for op in job.ops
                 if (w := queue_view.attempt_waiting(db(), op.attempts[-1] if op.attempts else None))},
    )


def _with_link(job: Job, endpoint: Endpoint) -> dict:
    """An endpoint as the job page shows it: a private one's link goes through the dashboard's hop."""
    shown = endpoint_json(endpoint)
    shown["href"] = url_for("dashboard.endpoint_open", job_id=job.id, label=endpoint.label) if shown["private"] else shown["url"]
    return shown


@bp.get("/jobs/<int:job_id>/endpoints/<label>")
@login_required
def endpoint_open(job_id: int, label: str):
    """Send a job's owner on to one of its endpoints; a private one through the gateway's hop,
    with a pass good for a minute that names the endpoint and the owner."""
    user = session_user()
    job = job_for(db(), user, job_id)
    endpoint = db().scalar(
        select(Endpoint).join(Op, Op.id == Endpoint.op_id)
        .where(Op.job_id == job.id, Endpoint.label == label, Endpoint.closed_at.is_(None))
    )
    if endpoint is None:
        raise NotFound(f"Job {job_id} has no open endpoint {label[:20]}; its op may have ended.")
    settings = core().settings
    if not (endpoint.private or settings.private_endpoints):
        return redirect(endpoint_url(label, settings.endpoint_domain))
    if job.owner_id != user.id:
        abort(403, "This endpoint is private: it opens only for its job's owner.")
    response = redirect(hop_url(settings.secret_key, settings.endpoint_domain, label, user.id))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/nodes")
@login_required
def nodes():
    return _nodes_page()


def _nodes_page(**extra):
    """The Nodes page: the user's nodes (every node, for an admin) and their own join tokens."""
    user = session_user()
    query = select(Node).options(selectinload(Node.gpus)).where(Node.removed_at.is_(None)).order_by(Node.id)
    if not user.is_admin:
        query = query.where(Node.owner_id == user.id)
    rows = list(db().scalars(query))
    ids = [n.id for n in rows]
    reserved: dict[int, list] = {}
    for r in queue_view.reservations(db(), node_ids=ids) if ids else []:
        reserved.setdefault(r.node_id, []).append(r)
    return render_template(
        "nodes.html", nodes=rows, running=queue_view.node_work(db(), ids), reserved=reserved,
        earned=earnings_by_node(db(), ids),
        new_token=None, server=request.host_url.rstrip("/"), join_tokens=join_tokens_of(db(), user),
        **{"new_join_token": None, **extra},
    )


@bp.post("/nodes")
@login_required
def node_create():
    check_csrf()
    try:
        node, token = create_node(db(), session_user(), request.form.get("name", ""))
    except PeergridError as e:
        flash(str(e), "error")
        return redirect(url_for("dashboard.nodes"))
    db().flush()
    # The token is shown on this page once, with the command that uses it; only its hash is kept.
    return render_template(
        "nodes.html", nodes=[node], running={}, reserved={}, earned={}, new_token=token, new_node=node,
        server=request.host_url.rstrip("/"),
    )


@bp.post("/nodes/join-tokens")
@login_required
def join_token_create():
    check_csrf()
    try:
        row, token = create_join_token(db(), session_user(), request.form.get("name", ""))
    except PeergridError as e:
        flash(str(e), "error")
        return redirect(url_for("dashboard.nodes"))
    # Shown on this page once, with the command that uses it; only its hash is kept.
    return _nodes_page(new_join_token=token, new_join_token_row=row)


@bp.post("/nodes/join-tokens/<int:token_id>/revoke")
@login_required
def join_token_revoke(token_id: int):
    check_csrf()
    row = revoke_join_token(db(), session_user(), token_id)
    flash(f"Join token {row.name or row.prefix} revoked: it makes no more nodes; the nodes it made keep working.", "ok")
    return redirect(url_for("dashboard.nodes"))


def _own_node(node_id: int) -> Node:
    user = session_user()
    node = db().get(Node, node_id)
    if node is None or node.removed_at is not None or (node.owner_id != user.id and not user.is_admin):
        raise NotFound(f"There is no node {node_id}.")
    return node


@bp.post("/nodes/<int:node_id>/remove")
@login_required
def node_remove(node_id: int):
    check_csrf()
    node = _own_node(node_id)
    try:
        remove_node(db(), node)
        flash("Node removed: its token no longer works.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("dashboard.nodes"))


@bp.post("/nodes/<int:node_id>/drain")
@login_required
def node_drain(node_id: int):
    check_csrf()
    set_draining(db(), _own_node(node_id), request.form.get("drain") != "0")
    return redirect(url_for("dashboard.nodes"))


@bp.get("/credits")
@login_required
def credits_page():
    user = session_user()
    return render_template(
        "credits.html",
        balances=ledger.balances(db(), user.id),
        rows=movements(db(), user_id=user.id, limit=200),
        payouts=[p for p, _ in payouts(db(), user_id=user.id)],
        min_payout=core().settings.min_payout,
    )


@bp.post("/credits/payout")
@login_required
def payout_request():
    check_csrf()
    try:
        amount = ledger.parse_credits(request.form.get("credits", ""))
        ledger.request_payout(db(), session_user(), amount, minimum=core().settings.min_payout)
        flash(f"Payout of {ledger.credits(amount)} credits requested; an admin will review it.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("dashboard.credits_page"))


@bp.post("/jobs/<int:job_id>/cancel")
@login_required
def job_cancel(job_id: int):
    check_csrf()
    cancel_job(db(), job_for(db(), session_user(), job_id))
    return redirect(url_for("dashboard.job", job_id=job_id))


@bp.post("/jobs/<int:job_id>/extend")
@login_required
def job_extend(job_id: int):
    check_csrf()
    minutes = request.form.get("minutes", type=int)
    if not minutes or minutes <= 0:
        raise PeergridError("Extend by a whole number of minutes, 1 or more.")
    extend_job(db(), job_for(db(), session_user(), job_id), minutes * 60)
    return redirect(url_for("dashboard.job", job_id=job_id))
