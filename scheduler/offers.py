"""Offers: the broker messages that tell workers an attempt is waiting, published after commit."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Iterable

from kombu import Connection, Exchange, Queue
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from protocol.messages import OFFER_EXCHANGE, OFFER_EXCHANGE_TYPE, Offer, node_queue, service_queue
from scheduler.models import Attempt
from scheduler.states import AttemptState, utcnow

log = logging.getLogger(__name__)

_STAGED = "peergrid.staged_offers"
OFFERS = Exchange(OFFER_EXCHANGE, type=OFFER_EXCHANGE_TYPE)


def offer_for(attempt: Attempt, *, node_id: int | None = None) -> Offer:
    """The offer of attempt: on the node's own queue when it must run there; else on its market's
    queue, or for an op that exposes ports the market's services queue, which only nodes that can
    serve endpoints take."""
    op = attempt.op
    market = op.market
    if node_id is not None:
        queue = node_queue(node_id)
    else:
        queue = service_queue(market.queue) if op.spec.get("expose") else market.queue
    return Offer(
        attempt_id=attempt.id,
        job_id=op.job_id,
        op=op.key,
        market=market.slug,
        queue=queue,
        gpu_count=market.gpu_count,
        min_vram_mb=market.min_vram_mb,
    )


def stage(session: Session, attempt: Attempt, *, now: datetime | None = None, node_id: int | None = None) -> None:
    """Mark attempt offered and hold its offer until the session commits.

    An attempt that must run on one node (node_id) is offered on that node's own queue.
    """
    attempt.offered_at = now or utcnow()
    if attempt.id is None:
        session.flush()  # the offer names the attempt by its id
    session.info.setdefault(_STAGED, []).append(offer_for(attempt, node_id=node_id))


def take_staged(session: Session) -> list[Offer]:
    return session.info.pop(_STAGED, [])


def discard_staged(session: Session) -> None:
    session.info.pop(_STAGED, None)


def stale_attempts(session: Session, *, older_than: timedelta, now: datetime | None = None) -> list[Attempt]:
    """Queued attempts whose offer sat unclaimed longer than older_than: it was lost, never went out
    (the broker was down after the commit), or no node could take it."""
    cutoff = (now or utcnow()) - older_than
    return list(
        session.scalars(
            select(Attempt)
            .where(Attempt.state == AttemptState.QUEUED, Attempt.offered_at < cutoff)
            .order_by(Attempt.id)
            .limit(1000)
        )
    )


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
