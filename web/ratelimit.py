"""Limiting how fast one client may try passwords."""

from __future__ import annotations

import threading
import time
from collections import deque


class Attempts:
    """At most `limit` failed tries per key in `window_s` seconds, counted in this process."""

    def __init__(self, limit: int = 10, window_s: float = 300.0):
        self.limit = limit
        self.window_s = window_s
        self._tries: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        tries = self._tries.setdefault(key, deque())
        while tries and now - tries[0] > self.window_s:
            tries.popleft()
        return tries

    def wait_needed(self, key: str) -> float:
        """Seconds until key may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            tries = self._recent(key, now)
            return self.window_s - (now - tries[0]) if len(tries) >= self.limit else 0.0

    def failed(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(key, now).append(now)
            if len(self._tries) > 100_000:  # forget idle keys rather than grow without end
                self._tries = {k: v for k, v in self._tries.items() if v and now - v[-1] < self.window_s}

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._tries.pop(key, None)
