"""What only admins may do with credits: grant, decide payouts, read and export the books."""

from __future__ import annotations

import csv
import io

from flask import Response, jsonify, request

from scheduler import ledger
from scheduler.accounts import find_user
from scheduler.errors import NotFound, PeergridError
from scheduler.ledger_views import movements, payouts
from web.api import bp
from web.api.serialize import iso, movement_json, payout_json
from web.auth import require_admin
from web.params import query_int, whole
from web.db import db


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise PeergridError("Send a JSON object.")
    return body


@bp.post("/admin/grants")
def admin_grant():
    admin = require_admin()
    body = _body()
    user = find_user(db(), str(body.get("email", "")))
    if user is None:
        raise NotFound(f"There is no account {body.get('email')!r}.")
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PeergridError('Send {"email", "amount", "memo"}: amount in micro-credits (1 credit = 1000000).')
    whole(amount, "amount", low=1)
    key = request.headers.get("Idempotency-Key")
    txn = ledger.grant(db(), user, amount, memo=str(body.get("memo") or ""), actor=admin,
                       key=f"grant:{key}" if key else None)
    return jsonify({"transaction": txn.id if txn else None, "balance": ledger.balances(db(), user.id)}), 201


@bp.get("/admin/payouts")
def admin_payouts():
    require_admin()
    rows = payouts(db(), state=request.args.get("state") or None)
    return jsonify({"payouts": [payout_json(p, email) for p, email in rows]})


@bp.post("/admin/payouts/<int:payout_id>/approve")
def admin_payout_approve(payout_id: int):
    admin = require_admin()
    payout = ledger.approve_payout(db(), admin, payout_id, str(_body().get("reference") or ""))
    return jsonify(payout_json(payout, None))


@bp.post("/admin/payouts/<int:payout_id>/reject")
def admin_payout_reject(payout_id: int):
    admin = require_admin()
    payout = ledger.reject_payout(db(), admin, payout_id, str(_body().get("reason") or ""))
    return jsonify(payout_json(payout, None))


@bp.get("/admin/books")
def admin_books():
    require_admin()
    books = ledger.check_books(db())
    return jsonify({"balanced": books.balanced, "totals": books.totals, "problems": books.problems})


@bp.get("/admin/ledger")
def admin_ledger():
    require_admin()
    rows = movements(
        db(), kind=request.args.get("kind") or None, job_id=query_int("job"),
        limit=500, offset=(query_int("page", 1, low=1, high=10**6) - 1) * 500,
    )
    return jsonify({"movements": [movement_json(m) for m in rows]})


def _csv(name: str, header: list[str], rows) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(buffer.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/admin/ledger.csv")
def admin_ledger_csv():
    require_admin()
    rows = movements(db(), kind=request.args.get("kind") or None, job_id=query_int("job"), limit=1_000_000)
    return _csv(
        "peergrid-ledger.csv",
        ["transaction", "time", "kind", "key", "account", "user", "amount_micro", "job", "attempt", "payout", "memo"],
        ([m.transaction_id, iso(m.time), m.kind, m.key, m.account, m.user_email or "", m.amount,
          m.job_id or "", m.attempt_id or "", m.payout_id or "", m.memo] for m in rows),
    )


@bp.get("/admin/payouts.csv")
def admin_payouts_csv():
    require_admin()
    rows = payouts(db(), state=request.args.get("state") or None, limit=1_000_000)
    return _csv(
        "peergrid-payouts.csv",
        ["payout", "user", "amount_micro", "state", "requested_at", "decided_at", "decided_by", "reference", "reason"],
        ([p.id, email, p.amount, p.state.value, iso(p.requested_at), iso(p.decided_at), p.decided_by_id or "",
          p.reference or "", p.reason or ""] for p, email in rows),
    )
