"""Signing up, and the account page: API tokens made and revoked, secrets kept and deleted."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for

from scheduler.accounts import create_api_token, create_user, revoke_token, tokens_of
from scheduler.errors import PeergridError
from scheduler.priorities import priority_cap
from scheduler.quotas import list_quotas
from scheduler.secrets import delete_secret, secrets_of, set_secret
from web.auth import check_csrf, session_user
from web.dashboard import login_required
from web.db import core, db

bp = Blueprint("account", __name__)


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    settings = core().settings
    if not settings.allow_signup:
        abort(404, "Sign-up is closed here; ask an admin for an account.")
    error = None
    email = ""
    if request.method == "POST":
        check_csrf()
        email = request.form.get("email", "")
        password = request.form.get("password", "")
        if password != request.form.get("confirm", ""):
            error = "The two passwords differ."
        else:
            try:
                user = create_user(db(), email, password, starter_credits=settings.starter_credits)
            except PeergridError as e:
                error = str(e)
            else:
                session.clear()
                session["user_id"] = user.id
                flash("Welcome to peergrid." + (" Your account starts with some credits to try it." if settings.starter_credits else ""), "ok")
                return redirect(url_for("dashboard.home"))
    return render_template("signup.html", error=error, email=email), (400 if error else 200)


@bp.get("/account")
@login_required
def account():
    return _account_page(new_token=None)


def _account_page(**extra):
    user = session_user()
    return render_template("account.html", tokens=tokens_of(db(), user), secrets=secrets_of(db(), user),
                           priority_cap=priority_cap(user, core().settings.priority_bounds),
                           quotas=list_quotas(db(), user), **extra)


@bp.post("/account/tokens")
@login_required
def token_create():
    check_csrf()
    name = request.form.get("name", "").strip() or "dashboard"
    token = create_api_token(db(), session_user(), name)
    # Shown on this page once; only its hash is kept.
    return _account_page(new_token=token, new_name=name)


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def token_revoke(token_id: int):
    check_csrf()
    row = revoke_token(db(), session_user(), token_id)
    flash(f"Token {row.name or row.prefix} revoked.", "ok")
    return redirect(url_for("account.account"))


@bp.post("/account/secrets")
@login_required
def secret_set():
    check_csrf()
    name = request.form.get("name", "").strip()
    try:
        _, created = set_secret(db(), session_user(), name, request.form.get("value", ""))
    except PeergridError as e:
        flash(str(e), "error")
    else:
        flash(f"Secret {name} {'stored' if created else 'replaced'}; jobs use it as %%secrets.{name}%%.", "ok")
    return redirect(url_for("account.account") + "#secrets")


@bp.post("/account/secrets/<name>/delete")
@login_required
def secret_delete(name: str):
    check_csrf()
    delete_secret(db(), session_user(), name)
    flash(f"Secret {name} deleted.", "ok")
    return redirect(url_for("account.account") + "#secrets")
