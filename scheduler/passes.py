"""The placement loop: the leading scheduler runs a pass when asked, and every second regardless.

It runs in a thread of each scheduler process, beside the upkeep (scheduler.upkeep), and places
only while that process holds the upkeep lease: at most one scheduler places at a time, and a
standby takes over within a lease's length when the leader dies. While it leads it takes the asks
for a pass (scheduler.offers.PASS_QUEUE) from the broker; many asks that arrive together are one pass.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from kombu import Connection, Queue

from scheduler.offers import OFFERS, PASS_QUEUE, broker_transport_options
from scheduler.placing import run_pass

log = logging.getLogger(__name__)

EVERY_S = 1.0


def _connect(broker_url: str, poll_interval_s: float) -> Connection:
    """A consuming connection; the SQL transport's polling interval is a class attribute, not an option."""
    if broker_url.startswith("sqla+"):
        from kombu.transport import sqlalchemy as sql_transport

        transport = type("PolledSQLTransport", (sql_transport.Transport,), {"polling_interval": poll_interval_s})
        return Connection(broker_url[len("sqla+"):], transport=transport,
                          transport_options=broker_transport_options(broker_url))
    return Connection(broker_url, transport_options=broker_transport_options(broker_url), heartbeat=0)


class Passes(threading.Thread):
    """Runs placement passes while leading (leading() says so): on each ask, and every EVERY_S."""

    def __init__(self, core, leading, *, every_s: float = EVERY_S, poll_interval_s: float = 0.05):
        super().__init__(name="placement", daemon=True)
        self.core = core
        self.leading = leading
        self.every_s = every_s
        self.poll_interval_s = poll_interval_s
        self._stopping = threading.Event()
        self._asked = threading.Event()
        self.passes = 0
        self._last = 0.0

    def run(self) -> None:
        while not self._stopping.is_set():
            if not self.leading():
                self.core.liveness.beat("placement", self.every_s * 5, "standing by")
                self._stopping.wait(self.every_s)
                continue
            try:
                self._lead()
            except Exception as e:  # the broker went away: place on the clock until it is back
                log.warning("cannot take asks for placement passes (%s); placing every %.0f s meanwhile", e, self.every_s)
                self._place_on_clock_for(5.0)

    def _lead(self) -> None:
        connection = _connect(self.core.settings.broker_url, self.poll_interval_s)
        try:
            queue = Queue(PASS_QUEUE, OFFERS, routing_key=PASS_QUEUE, durable=True)
            with connection.Consumer([queue], callbacks=[self._on_ask], accept=["json"]):
                while not self._stopping.is_set() and self.leading():
                    self._asked.clear()
                    try:
                        connection.drain_events(timeout=min(self.every_s, max(0.01, self._due_in())))
                        # Take every ask already waiting, so they make one pass.
                        while True:
                            connection.drain_events(timeout=0.001)
                    except socket.timeout:
                        pass
                    if self._asked.is_set() or self._due_in() <= 0:
                        self.place()
        finally:
            connection.release()

    def _on_ask(self, body, message) -> None:
        message.ack()
        self._asked.set()

    def _due_in(self) -> float:
        return self._last + self.every_s - time.monotonic()

    def _place_on_clock_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self._stopping.is_set() and self.leading():
            self.place()
            self._stopping.wait(self.every_s)

    def place(self) -> None:
        """One pass, committed (which sends its offers); never raises."""
        self._last = time.monotonic()
        settings = self.core.settings
        try:
            with self.core.transaction() as session:
                result = run_pass(session, half_life_s=settings.fair_share_half_life_s,
                                  claim_within_s=settings.reoffer_after_s)
            self.passes += 1
            if result.placed:
                log.debug("placed %d attempt(s); %d wait", result.placed, result.waiting)
        except Exception:
            log.exception("a placement pass failed; the next one tries again")
        self.core.liveness.beat("placement", self.every_s * 5, None)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
