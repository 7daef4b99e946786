"""Credits as people see their own: balance, movements, payout requests."""

from __future__ import annotations

from flask import jsonify, request

from scheduler import ledger
from scheduler.errors import PeergridError
from scheduler.ledger_views import movements, payouts
from web.api import bp
from web.api.serialize import movement_json, payout_json
from web.auth import require_user
from web.params import query_int, whole
from web.db import core, db


@bp.get("/ledger/balance")
def balance():
    user = require_user()
    return jsonify(ledger.balances(db(), user.id))


@bp.get("/ledger/transactions")
def my_movements():
    user = require_user()
    page = query_int("page", 1, low=1, high=10**6)
    rows = movements(db(), user_id=user.id, limit=100, offset=(page - 1) * 100)
    return jsonify({"movements": [movement_json(m) for m in rows], "page": page})


@bp.post("/payouts")
def payout_request():
    user = require_user()
    body = request.get_json(silent=True)
    amount = body.get("amount") if isinstance(body, dict) else None
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PeergridError('Send {"amount": N}: the payout in micro-credits (1 credit = 1000000).')
    whole(amount, "amount", low=1)
    payout = ledger.request_payout(db(), user, amount, minimum=core().settings.min_payout)
    return jsonify(payout_json(payout, user.email)), 201


@bp.get("/payouts")
def my_payouts():
    user = require_user()
    return jsonify({"payouts": [payout_json(p, email) for p, email in payouts(db(), user_id=user.id)]})
