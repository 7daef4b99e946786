"""A service's health check as both sides hold it: the server reads it from an op's `expose`
(scheduler.expose), and the worker runs it against the container (worker.health)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HealthCheck:
    """One check of an exposed port, with Nosana's fields: an HTTP request, or a WebSocket that must answer."""

    type: str  # "http" or "websocket"
    continuous: bool = False
    path: str = "/"
    method: str = "GET"
    expected_status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    # HTTP: text the answer's body must contain; WebSocket: the first message it must send.
    expected_response: str | None = None

    def describe(self) -> str:
        return f"{self.method} {self.path}" if self.type == "http" else "the WebSocket at /"
