"""Sends a running attempt's output lines to the server in batches, in order."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Iterable

from protocol.messages import LogRecord
from worker.client import NodeClient
from worker.errors import AttemptGone, ServerError

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MASK = "***"
# Lines held while the server cannot be reached; past this the oldest are dropped and said so.
MAX_BUFFERED = 100_000


class LogShipper:
    def __init__(self, client: NodeClient, attempt_id: int, *, interval_s: float = 0.25, redact: Iterable[str] = ()):
        self.client = client
        self.attempt_id = attempt_id
        self.interval_s = interval_s
        # The attempt's secret values, longest first so one inside another is masked whole.
        self._masks = sorted((value for value in redact if value), key=len, reverse=True)
        self._lines: deque[LogRecord] = deque()
        self._seq = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        # Set by finish(): the last batch goes with the finished report rather than on its own.
        self._keep_last = False
        # Set when the server says the attempt is no longer ours: the run must stop.
        self.gone = threading.Event()
        # Set when the server says the attempt's log is at its limit: later lines are discarded here.
        self.full = threading.Event()
        # Set while sending fails (the server is down): finishing then tries no more.
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name=f"logs-{attempt_id}", daemon=True)
        self._thread.start()

    def add(self, stream: str, text: str) -> None:
        if self.full.is_set():
            # The container's output is still read, so it never blocks on a full pipe, but goes nowhere.
            return
        text = self.mask(text)
        with self._lock:
            self._seq += 1
            self._lines.append(LogRecord(self._seq, stream, text))
            if len(self._lines) > MAX_BUFFERED:
                self._lines.popleft()
                self._dropped += 1

    def mask(self, text: str) -> str:
        """Return text with each of the attempt's secret values replaced by ***."""
        for value in self._masks:
            text = text.replace(value, MASK)
        return text

    def close(self, timeout: float = 30.0) -> None:
        """Send what is left, then stop."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def pending(self) -> list[LogRecord]:
        """The lines the server has not acknowledged yet (none once it has no use for them)."""
        with self._lock:
            return [] if (self.gone.is_set() or self.full.is_set()) else list(self._lines)

    def finish(self, timeout: float = 30.0) -> list[LogRecord]:
        """Stop, sending all but the last batch, and return that batch for the finished report."""
        self._keep_last = True
        self.close(timeout)
        with self._lock:
            rest = [] if (self.gone.is_set() or self.full.is_set()) else list(self._lines)
            self._lines.clear()
        return rest

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._closing and self._failing:
                return  # the server is not answering: what is left goes with the attempt's outcome
            self._flush()
            if self._closing:
                if not self._failing:
                    self._flush()
                return

    def _flush(self) -> None:
        while not (self.gone.is_set() or self.full.is_set()):
            with self._lock:
                if self._dropped:
                    self._seq += 1
                    note = f"[peergrid] {self._dropped} log lines were dropped while the server was unreachable."
                    self._lines.append(LogRecord(self._seq, "system", note))
                    self._dropped = 0
                if self._keep_last and self._closing and len(self._lines) <= MAX_BATCH:
                    return
                batch = [self._lines[i] for i in range(min(MAX_BATCH, len(self._lines)))]
            if not batch:
                return
            try:
                answer = self.client.logs(self.attempt_id, batch)
            except AttemptGone:
                self.gone.set()
                return
            except ServerError as e:
                self._failing = True
                log.warning("could not send logs of attempt %s: %s", self.attempt_id, e)
                return
            self._failing = False
            with self._lock:
                for _ in range(len(batch)):
                    self._lines.popleft()
                if answer.full:
                    self.full.set()
                    self._lines.clear()
            if self.full.is_set():
                log.info("the log of attempt %s reached the server's limit; discarding its further output",
                         self.attempt_id, extra={"attempt": self.attempt_id})
                return
