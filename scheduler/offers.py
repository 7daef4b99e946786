"""Offers: the broker messages that tell workers an attempt is waiting, published after commit."""

from __future__ import annotations

import logging
from typing import Iterable

from kombu import Connection, Exchange, Queue
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from protocol.messages import OFFER_EXCHANGE, OFFER_EXCHANGE_TYPE, Offer, node_queue
from scheduler.models import Attempt, Market, Op

log = logging.getLogger(__name__)

_STAGED = "peergrid.staged_offers"
OFFERS = Exchange(OFFER_EXCHANGE, type=OFFER_EXCHANGE_TYPE)
# The queue the leading scheduler takes its asks for a placement pass from (scheduler.passes).
PASS_QUEUE = "scheduler.passes"


def offer_for(attempt: Attempt, *, node_id: int, gpus: tuple[str, ...] = ()) -> Offer:
    """The offer of attempt, placed on node_id's GPUs gpus (none for a CPU market)."""
    op = attempt.op
    return _offer(attempt.id, op.job_id, op.key, op.market, node_id, gpus)


def _offer(attempt_id: int, job_id: int, key: str, market, node_id: int, gpus: tuple[str, ...]) -> Offer:
    return Offer(
        attempt_id=attempt_id, job_id=job_id, op=key, market=market.slug, queue=node_queue(node_id),
        gpu_count=market.gpu_count, min_vram_mb=market.min_vram_mb, gpus=tuple(gpus),
    )


def stage_placed(session: Session, placements) -> None:
    """Hold, until the session commits, the offers of attempts just placed: each on its node's queue,
    naming the GPUs it was placed on."""
    if not placements:
        return
    where = {p.attempt_id: p for p in placements}
    markets = {m.id: m for m in session.scalars(select(Market))}
    staged = session.info.setdefault(_STAGED, [])
    for chunk in _chunks(list(where), 5000):
        rows = session.execute(
            select(Attempt.id, Op.job_id, Op.key, Op.market_id).join(Op, Op.id == Attempt.op_id).where(Attempt.id.in_(chunk))
        )
        for attempt_id, job_id, key, market_id in rows:
            placement = where[attempt_id]
            staged.append(_offer(attempt_id, job_id, key, markets[market_id], placement.node_id, placement.gpus))


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def take_staged(session: Session) -> list[Offer]:
    return session.info.pop(_STAGED, [])


def discard_staged(session: Session) -> None:
    session.info.pop(_STAGED, None)


class OfferPublisher:
    """Publishes offers to their market queues over a small pool of broker connections."""

    def __init__(self, broker_url: str):
        self.broker_url = broker_url
        self._connection = Connection(broker_url, transport_options=broker_transport_options(broker_url))
        self._pool = self._connection.Pool(limit=8)

    def publish(self, offers: Iterable[Offer]) -> int:
        """Publish each offer; return how many went out. A failure is logged, not raised:
        the scheduler publishes any offer left unclaimed again."""
        sent = 0
        offers = list(offers)
        if not offers:
            return 0
        try:
            with self._pool.acquire(block=True, timeout=10) as conn:
                producer = conn.Producer(serializer="json")
                for offer in offers:
                    queue = Queue(offer.queue, OFFERS, routing_key=offer.queue, durable=True)
                    producer.publish(
                        offer.to_wire(),
                        exchange=OFFERS,
                        routing_key=offer.queue,
                        declare=[queue],
                        retry=True,
                        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                    )
                    sent += 1
        except Exception as e:  # the broker is down or refused: the re-offer task catches up
            log.warning("could not publish %d offer(s) to the broker: %s", len(offers) - sent, e)
        return sent

    def ask_for_pass(self) -> None:
        """Ask the leading scheduler for a placement pass; a failure is logged, the next tick places anyway."""
        try:
            with self._pool.acquire(block=True, timeout=10) as conn:
                queue = Queue(PASS_QUEUE, OFFERS, routing_key=PASS_QUEUE, durable=True)
                conn.Producer(serializer="json").publish(
                    {"pass": True}, exchange=OFFERS, routing_key=PASS_QUEUE, declare=[queue], retry=True,
                    retry_policy={"max_retries": 1, "interval_start": 0.1},
                )
        except Exception as e:
            log.warning("could not ask for a placement pass (the next timed pass places): %s", e)

    def close(self) -> None:
        self._pool.force_close_all()
        self._connection.release()


def broker_transport_options(broker_url: str) -> dict:
    """Transport options for a broker URL: the SQL transport hands them to create_engine."""
    if broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    if broker_url.startswith(("redis", "rediss")):
        # Offers are acknowledged on claim, within seconds; an hour is far beyond that.
        return {"visibility_timeout": 3600}
    return {}


def prune_delivered(broker_url: str) -> int:
    """Delete the messages an SQL broker has delivered; return how many.

    kombu's SQL transport marks a message invisible when it hands it out and never deletes it, so the
    embedded broker's table would grow by one row per offer and task for ever. An invisible message
    is never read again (an unacknowledged one goes back as a new row), so deleting them is safe.
    Other brokers delete on delivery themselves: for them this does nothing.
    """
    if not broker_url.startswith("sqla+"):
        return 0
    engine = create_engine(broker_url.removeprefix("sqla+"), **broker_transport_options(broker_url))
    try:
        with engine.begin() as conn:
            if not inspect(conn).has_table("kombu_message"):
                return 0
            return conn.execute(text("DELETE FROM kombu_message WHERE visible = :no"), {"no": False}).rowcount
    finally:
        engine.dispose()
