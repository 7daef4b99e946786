"""The admin's pages: payouts to decide, the ledger and whether the books balance, users to credit and
to limit (priority caps and quotas)."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from protocol.gpus import mb_from_gb
from scheduler import ledger
from scheduler.accounts import user_named
from scheduler.errors import PeergridError
from scheduler.ledger_views import movements, payouts
from scheduler.markets import create_market, update_market
from scheduler.models import Account, AccountKind, Market, Node, User
from scheduler.nodes import ban_node, unban_node
from scheduler.priorities import set_max_priority
from scheduler.quotas import clear_quota, list_quotas, market_named, set_quota
from web.auth import check_csrf, session_user
from web.dashboard import login_required
from web.db import core, db

bp = Blueprint("admin", __name__, url_prefix="/admin")


def admin_required(view):
    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not session_user().is_admin:
            abort(403, "Only an admin may see this page.")
        return view(*args, **kwargs)

    return wrapped


@bp.get("/payouts")
@admin_required
def payout_queue():
    state = request.args.get("state") or "requested"
    rows = payouts(db(), state=None if state == "all" else state)
    return render_template("admin/payouts.html", rows=rows, state=state)


@bp.post("/payouts/<int:payout_id>/decide")
@admin_required
def payout_decide(payout_id: int):
    check_csrf()
    admin = session_user()
    try:
        if request.form.get("decision") == "approve":
            ledger.approve_payout(db(), admin, payout_id, request.form.get("reference", ""))
            flash(f"Payout {payout_id} approved.", "ok")
        else:
            ledger.reject_payout(db(), admin, payout_id, request.form.get("reason", ""))
            flash(f"Payout {payout_id} rejected.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.payout_queue"))


@bp.get("/ledger")
@admin_required
def ledger_page():
    kind = request.args.get("kind") or None
    job = request.args.get("job", type=int)
    page = max(1, request.args.get("page", 1, type=int))
    rows = movements(db(), kind=kind, job_id=job, limit=100, offset=(page - 1) * 100)
    return render_template(
        "admin/ledger.html", rows=rows, books=ledger.check_books(db()), kind=kind, job=job, page=page,
        kinds=["grant", "escrow", "settle", "release", "payout_request", "payout_paid", "payout_rejected"],
    )


@bp.get("/users")
@admin_required
def users():
    people = db().scalars(select(User).order_by(User.id)).all()
    available = dict(
        db().execute(select(Account.user_id, func.sum(Account.balance)).where(Account.kind == AccountKind.AVAILABLE)
                     .group_by(Account.user_id)).all()
    )
    quotas: dict[int, list] = {}
    for quota in list_quotas(db()):
        quotas.setdefault(quota.user_id, []).append(quota)
    return render_template(
        "admin/users.html", people=people, available_by_user=available, quotas_by_user=quotas,
        markets=db().scalars(select(Market.slug).order_by(Market.slug)).all(),
        default_cap=core().settings.max_priority,
    )


def _user(user_id: int) -> User:
    """The user of a form's URL; 404 when there is none."""
    user = db().get(User, user_id)
    if user is None:
        abort(404, f"There is no user {user_id}.")
    return user


def _form_limit(name: str, label: str) -> int | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise PeergridError(f"{label} is a whole number, or empty for no limit; not {raw!r}.")
    return int(raw)


@bp.post("/quotas")
@admin_required
def quota_set():
    """Set a person's quota on a market (or on every market); clear removes it, as do two empty limits."""
    check_csrf()
    slug = request.form.get("market", "").strip() or None
    where = f"on {slug}" if slug else "on every market"
    try:
        user = user_named(db(), request.form.get("user", ""))
        market = market_named(db(), slug)
        if request.form.get("clear"):
            clear_quota(db(), user, market)
            flash(f"Removed {user.email}'s quota {where}.", "ok")
        else:
            kept = set_quota(db(), user, market, max_running_gpus=_form_limit("running_gpus", "Running GPUs"),
                             max_waiting_jobs=_form_limit("waiting_jobs", "Waiting jobs"))
            flash(f"Set {user.email}'s quota {where}." if kept else f"{user.email} has no quota {where} now.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/max-priority")
@admin_required
def max_priority(user_id: int):
    """Set the highest priority a person may ask for; empty gives them the cluster's default."""
    check_csrf()
    user = _user(user_id)
    raw = request.form.get("max_priority", "").strip()
    try:
        if raw and not raw.isdigit():
            raise PeergridError(f"A priority cap is a whole number, or empty for the cluster's default; not {raw!r}.")
        set_max_priority(db(), user, int(raw) if raw else None)
        flash(f"{user.email} may ask for priorities up to {raw or 'the default'}.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/grant")
@admin_required
def grant(user_id: int):
    check_csrf()
    user = _user(user_id)
    try:
        amount = ledger.parse_credits(request.form.get("credits", ""))
        ledger.grant(db(), user, amount, memo=request.form.get("memo", ""), actor=session_user(),
                     key=f"grant:form:{request.form.get('once', '')}" if request.form.get("once") else None)
        flash(f"Granted {ledger.credits(amount)} credits to {user.email}.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.users"))


@bp.post("/nodes/<int:node_id>/ban")
@admin_required
def node_ban(node_id: int):
    check_csrf()
    node = db().get(Node, node_id)
    if node is None or node.removed_at is not None:
        abort(404, f"There is no node {node_id}.")
    try:
        if request.form.get("ban") == "0":
            unban_node(db(), node)
            flash(f"The ban on {node.name} is lifted.", "ok")
        else:
            ban_node(db(), node, request.form.get("reason", ""))
            flash(f"Node {node.name} is banned; what it ran is offered elsewhere.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("dashboard.nodes"))


@bp.get("/markets")
@admin_required
def markets():
    rows = db().scalars(select(Market).order_by(Market.gpu_count, Market.price_per_second)).all()
    return render_template("admin/markets.html", markets=rows)


def _market_form() -> dict:
    form = request.form
    fields: dict = {}
    for key in ("gpu_count", "price_per_second", "max_timeout_s"):
        if form.get(key, "").strip():
            fields[key] = int(form[key]) if form[key].strip().isdigit() else -1
    if form.get("min_vram_gb", "").strip():
        try:
            fields["min_vram_mb"] = mb_from_gb(form["min_vram_gb"])
        except ValueError:
            fields["min_vram_mb"] = -1
    if form.get("fee_percent", "").strip():
        try:
            fields["fee_ppm"] = round(float(form["fee_percent"]) * 10_000)
        except ValueError:
            fields["fee_ppm"] = -1
    if "gpu_models" in form:
        fields["gpu_models"] = [m.strip() for m in form["gpu_models"].split(",") if m.strip()]
    for key in ("min_compute_capability", "min_cuda_version"):
        if key in form:
            fields[key] = form[key].strip() or None
    if form.get("name", "").strip():
        fields["name"] = form["name"].strip()
    return fields


@bp.post("/markets")
@admin_required
def market_create():
    check_csrf()
    try:
        market = create_market(db(), request.form.get("slug", "").strip(), **_market_form())
        flash(f"Market {market.slug} created.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.markets"))


@bp.post("/markets/<slug>")
@admin_required
def market_edit(slug: str):
    check_csrf()
    try:
        update_market(db(), slug, **_market_form())
        flash(f"Market {slug} saved.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.markets"))
