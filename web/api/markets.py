"""Markets, for anyone signed in."""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select

from scheduler.errors import PeergridError
from scheduler.markets import create_market, update_market
from scheduler.models import Market
from web.api import bp
from web.api.serialize import market_json
from web.auth import require_admin, require_user
from web.db import db


@bp.get("/markets")
def markets_index():
    require_user()
    markets = db().scalars(select(Market).order_by(Market.price_per_second, Market.slug))
    return jsonify({"markets": [market_json(m) for m in markets]})



def _fields() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise PeergridError("Send the market's fields as a JSON object.")
    return body


@bp.post("/admin/markets")
def markets_create():
    require_admin()
    body = _fields()
    slug = body.pop("slug", None)
    market = create_market(db(), slug if isinstance(slug, str) else "", **body)
    return jsonify(market_json(market)), 201


@bp.patch("/admin/markets/<slug>")
def markets_update(slug: str):
    require_admin()
    return jsonify(market_json(update_market(db(), slug, **_fields())))
