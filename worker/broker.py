"""Taking offers from the broker's market queues."""

from __future__ import annotations

import logging
import socket
from typing import Callable, Iterable

from kombu import Connection, Exchange, Queue

from protocol.messages import OFFER_EXCHANGE, OFFER_EXCHANGE_TYPE

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = Exchange(OFFER_EXCHANGE, type=OFFER_EXCHANGE_TYPE)


def connect(broker_url: str, *, poll_interval_s: float = 0.1) -> Connection:
    """A connection to the broker the server named.

    kombu's SQL transport polls once a second and hands its transport options to create_engine,
    so a polling interval cannot be passed as an option: a subclass carries it instead.
    """
    if broker_url.startswith("sqla+"):
        # Imported here: it imports SQLAlchemy, which a worker on a Redis or RabbitMQ broker lacks.
        from kombu.transport import sqlalchemy as sql_transport

        transport = type("PolledSQLTransport", (sql_transport.Transport,), {"polling_interval": poll_interval_s})
        return Connection(
            broker_url[len("sqla+"):], transport=transport, transport_options={"connect_args": {"timeout": 30}}
        )
    options = {}
    if broker_url.startswith(("redis", "rediss")):
        # So that a worker's Redis user needs rights on its queues' keys alone ("Workers on other
        # machines" in the README): kombu's ack emulation would copy each offer taken into `unacked`
        # keys it shares with the scheduler's own tasks, yet an offer taken and never acknowledged is
        # published again by the scheduler anyway; and offers carry no priority, so the per-priority
        # lists kombu would also poll are never used.
        options = {"ack_emulation": False, "priority_steps": [0]}
    return Connection(broker_url, transport_options=options, heartbeat=0)


def market_queues(names: Iterable[str]) -> list[Queue]:
    return [Queue(name, DEFAULT_EXCHANGE, routing_key=name, durable=True) for name in names]


def consume_offers(
    connection: Connection,
    queues: Callable[[], list[str]],
    on_offer: Callable[[dict, object], None],
    *,
    can_take: Callable[[], bool],
    stopping: Callable[[], bool],
    idle_wait: Callable[[float], None],
    beat: Callable[[], None] | None = None,
) -> None:
    """Hold a consumer on the queues the node qualifies for, only while it can take work.

    One offer at a time is delivered (prefetch 1); on_offer acknowledges it. When the node is
    full, or the queues it qualifies for change, the consumer is cancelled and made anew.

    beat is called at the top of each turn of either loop, the one that waits for capacity (or for
    the broker, after it failed) and the one that waits for offers: each turn waits a second or
    two at most, so a loop stuck in a call stops the beats, and a node with nothing free does not.
    """
    beat = beat or (lambda: None)
    while not stopping():
        beat()
        if not can_take():
            idle_wait(1.0)
            continue
        names = queues()
        if not names:
            idle_wait(1.0)
            continue
        try:
            connection.ensure_connection(max_retries=3, interval_start=0.5, interval_step=1, interval_max=5)
            with connection.Consumer(
                market_queues(names), callbacks=[on_offer], accept=["json"], prefetch_count=1
            ):
                while not stopping() and can_take() and queues() == names:
                    beat()
                    try:
                        connection.drain_events(timeout=1)
                    except socket.timeout:
                        pass
        except connection.recoverable_connection_errors + connection.recoverable_channel_errors as e:
            log.warning("lost the broker (%s); reconnecting", e)
            connection.collect()
            idle_wait(2.0)
        except connection.connection_errors as e:
            log.warning("the broker is unreachable (%s); retrying", e)
            idle_wait(2.0)
        except Exception:
            # Anything else (say, two processes creating the same queue row in the SQL broker at once)
            # must not end the worker: drop the channel and consume anew; the server re-offers.
            log.exception("unexpected error while taking offers; starting the consumer again")
            connection.collect()
            idle_wait(2.0)
