"""Markets, for anyone signed in."""

from __future__ import annotations

from flask import jsonify
from sqlalchemy import select

from scheduler.models import Market
from web.api import bp
from web.api.serialize import market_json
from web.auth import require_user
from web.db import db


@bp.get("/markets")
def markets_index():
    require_user()
    markets = db().scalars(select(Market).order_by(Market.price_per_second, Market.slug))
    return jsonify({"markets": [market_json(m) for m in markets]})

