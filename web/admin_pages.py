"""The admin's pages: payouts to decide, the ledger and whether the books balance, users to credit."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from scheduler import ledger
from scheduler.errors import PeergridError
from scheduler.ledger_views import movements, payouts
from scheduler.models import Account, AccountKind, User
from web.auth import check_csrf, session_user
from web.dashboard import login_required
from web.db import db

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
    return render_template("admin/users.html", people=people, available_by_user=available)


@bp.post("/users/<int:user_id>/grant")
@admin_required
def grant(user_id: int):
    check_csrf()
    user = db().get(User, user_id)
    if user is None:
        abort(404, f"There is no user {user_id}.")
    try:
        amount = ledger.parse_credits(request.form.get("credits", ""))
        ledger.grant(db(), user, amount, memo=request.form.get("memo", ""), actor=session_user(),
                     key=f"grant:form:{request.form.get('once', '')}" if request.form.get("once") else None)
        flash(f"Granted {ledger.credits(amount)} credits to {user.email}.", "ok")
    except PeergridError as e:
        flash(str(e), "error")
    return redirect(url_for("admin.users"))
