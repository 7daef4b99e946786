"""Celery's worker events for the node, so monitors that read them (Flower) list it beside Celery workers."""

from __future__ import annotations

import logging
import os
import platform
import threading
from typing import Callable

from celery import Celery
from celery.events import EventDispatcher

from worker import __version__
from worker.broker import connect

log = logging.getLogger(__name__)

SW_IDENT = "peergrid-worker"


def event_hostname(node_name: str) -> str:
    """Name the node as Celery names workers (name@host), so monitors tell it from the scheduler's."""
    return f"peergrid-node@{node_name}"


class NodeEvents:
    """Send worker-online, then worker-heartbeat every `freq` seconds, then worker-offline, on a thread of its own.

    Sending is best effort and never reaches the agent: a broker that refuses (consume-only
    credentials) is logged once and tried again at the next beat, and the thread of its own keeps
    a stalled publish from holding up the agent's heartbeats to the server.
    """

    def __init__(self, broker_url: str, hostname: str, *, freq: float, load: Callable[[], dict]):
        self.broker_url = broker_url
        self.hostname = hostname
        self.freq = freq
        self._load = load
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection = None
        self._dispatcher: EventDispatcher | None = None
        self._failing = False
        # A private app: the dispatcher takes its event settings and logical clock from it, never a broker.
        self._app = Celery("peergrid-worker", set_as_current=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="worker-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send worker-offline and end the thread, waiting at most `timeout` seconds."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _beat(self) -> None:
        if self._carries_no_events():
            log.info("this broker carries no events between processes; Flower cannot list this node")
            return
        self.send("worker-online")
        while not self._done.wait(self.freq):
            self.send("worker-heartbeat")
        if not self._failing:  # a broker that refused the last beat would only hold up the stop
            self.send("worker-offline")
        self._close()

    def send(self, kind: str) -> bool:
        """Send one worker event; return whether it went out."""
        try:
            self._open().send(
                kind,
                freq=self.freq,
                loadavg=_load_average(),
                sw_ident=SW_IDENT,
                sw_ver=__version__,
                sw_sys=platform.system(),
                **self._load(),
            )
        except Exception as e:
            self._close()
            if not self._failing:
                log.warning(
                    "cannot send worker events to the broker (%s); Flower will not list this node until it can. "
                    "Give this worker's broker user publish rights on the celeryev exchange, or run it with --no-events.",
                    e,
                )
                self._failing = True
            return False
        if self._failing:
            log.info("sending worker events again")
            self._failing = False
        return True

    def _carries_no_events(self) -> bool:
        """Tell whether Celery turns events off on this transport (kombu's SQL one fans out in-process only)."""
        connection = connect(self.broker_url)
        try:
            return connection.transport.driver_type in EventDispatcher.DISABLED_TRANSPORTS
        finally:
            connection.release()

    def _open(self) -> EventDispatcher:
        if self._dispatcher is None:
            self._connection = connect(self.broker_url)
            # Without buffering a refused publish raises here, where it is logged, instead of piling up.
            self._dispatcher = EventDispatcher(
                self._connection, hostname=self.hostname, app=self._app, buffer_while_offline=False
            )
        return self._dispatcher

    def _close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._dispatcher = None
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # a broken connection may fail to close; it is dropped either way
                pass
            self._connection = None


def _load_average() -> tuple[float, ...]:
    try:
        return tuple(round(each, 2) for each in os.getloadavg())
    except OSError:
        return (0.0, 0.0, 0.0)
