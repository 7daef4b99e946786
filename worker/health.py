"""A service's health checks, run by the worker against its container while it runs.

Each exposed port is checked where the worker dials it (worker.reach.dial_target, as its tunnel does): with the
op's `health_checks` (Nosana's fields: HTTP method, path, headers, body, expected_status and
expected_response; WebSocket expected_response), or, without any, by whether it accepts
connections. A port is healthy once every check passed; an op is ready when every port is. Checks
marked `continuous` are repeated while the service runs; when one keeps failing the monitor asks for
a restart, which the runtime does as the op's restart_policy allows.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from protocol.health_checks import HealthCheck
from protocol.services import HealthReport, PortHealth

log = logging.getLogger(__name__)

# How often a port whose checks have not passed yet is checked again, and how long one check may take.
STARTING_EVERY_S = 0.5
CHECK_TIMEOUT_S = 5.0
# How long a connection to a port with no checks must stay open to count as accepted: the engine's
# proxy on the published port accepts at once, and closes at once when nothing listens behind it.
ACCEPTED_AFTER_S = 0.3
# How often a starting port's failure sentence may change what is reported.
STARTING_DETAIL_EVERY_S = 5.0
# How long the monitor waits before sending a report the server did not take.
RESEND_AFTER_S = 2.0


def port_checks(expose: Any) -> dict[int, tuple[HealthCheck, ...]]:
    """Each exposed port's checks, from an op's `expose` as the server validated it (a range's
    checks apply to each of its ports); ports without checks are absent."""
    items = expose if isinstance(expose, list) else [expose]
    found: dict[int, tuple[HealthCheck, ...]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("health_checks"), list):
            continue
        port = item.get("port")
        if isinstance(port, str) and "-" in port:
            first, last = (int(n) for n in port.split("-", 1))
        elif isinstance(port, (int, str)):
            first = last = int(port)
        else:
            continue
        checks = tuple(_check(c) for c in item["health_checks"] if isinstance(c, dict))
        for number in range(first, last + 1):
            found[number] = checks
    return found


def _check(raw: dict) -> HealthCheck:
    headers = raw.get("headers") or {}
    return HealthCheck(
        type=str(raw.get("type", "http")),
        continuous=raw.get("continuous") is True,
        path=str(raw.get("path") or "/"),
        method=str(raw.get("method") or "GET"),
        expected_status=raw.get("expected_status"),
        headers=tuple((str(k), str(v)) for k, v in headers.items()) if isinstance(headers, dict) else (),
        body=raw.get("body"),
        expected_response=raw.get("expected_response") if isinstance(raw.get("expected_response"), str) else None,
    )


# -- one check -----------------------------------------------------------------------------------


def run_check(check: HealthCheck, address: tuple[str, int], *, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """Run one check against address: None when it passed, else a short sentence saying how it failed."""
    if check.type == "websocket":
        return websocket_check(check, address, timeout=timeout)
    return http_check(check, address, timeout=timeout)


def http_check(check: HealthCheck, address: tuple[str, int], *, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    headers = dict(check.headers)
    body = check.body
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request(check.method, check.path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read(1024 * 1024).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return f"{check.describe()} did not answer ({_reason(e)})"
    finally:
        connection.close()
    if check.expected_status is not None and response.status != check.expected_status:
        return f"{check.describe()} answered {response.status}, not {check.expected_status}"
    if check.expected_response is not None and check.expected_response not in text:
        return f"{check.describe()} answered without {_short(check.expected_response)}"
    return None


def websocket_check(check: HealthCheck, address: tuple[str, int], *, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """Open a WebSocket at / and read its first message, which must be expected_response."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    host, port = address
    try:
        with connect(f"ws://{host}:{port}/", open_timeout=timeout, close_timeout=1) as ws:
            message = ws.recv(timeout=timeout)
    except TimeoutError:
        return f"the WebSocket at / sent nothing within {timeout:g} s"
    except (OSError, WebSocketException) as e:
        return f"the WebSocket at / did not open ({_reason(e)})"
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    if check.expected_response is not None and message.strip() != check.expected_response.strip():
        return f"the WebSocket at / sent {_short(message)}, not {_short(check.expected_response)}"
    return None


def accepts_connections(address: tuple[str, int], *, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """A port with no checks: it must accept a connection and keep it open (or send something)."""
    try:
        with socket.create_connection(address, timeout=timeout) as connection:
            connection.settimeout(ACCEPTED_AFTER_S)
            try:
                if connection.recv(1) == b"":
                    return "it accepts connections but closes them at once (nothing listens on it in the container yet)"
            except TimeoutError:
                pass  # open and waiting for the client to speak: it is served
    except ConnectionResetError:
        return "it accepts connections but resets them (nothing listens on it in the container yet)"
    except OSError as e:
        return f"it does not accept connections ({_reason(e)})"
    return None


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _short(text: str, most: int = 60) -> str:
    return repr(text if len(text) <= most else text[:most] + "…")


# -- the monitor ---------------------------------------------------------------------------------


@dataclass
class _Port:
    port: int
    checks: tuple[HealthCheck, ...]
    state: str = "starting"
    detail: str | None = None
    due: float = 0.0
    failures: int = 0
    detail_sent_at: float = 0.0

    @property
    def continuous(self) -> tuple[HealthCheck, ...]:
        return tuple(c for c in self.checks if c.continuous)


@dataclass
class _Restarts:
    count: int = 0
    restarting: bool = False
    reason: str | None = None


class HealthMonitor:
    """Checks a service attempt's exposed ports in a thread of its own, from watch() (the container
    runs and its ports are published) to stop(), and sends send(report) whenever how they stand
    changes. restart_wanted() says why the container should be restarted, when a continuous check
    has failed `failures` times in a row."""

    def __init__(
        self,
        ports: list[int] | tuple[int, ...],
        expose: Any,
        send: Callable[[HealthReport], None],
        *,
        interval_s: float = 10.0,
        failures: int = 3,
        note: Callable[[str], None] = lambda text: None,
        name: str = "health",
    ):
        checks = port_checks(expose)
        self.ports = [_Port(p, checks.get(p, ())) for p in sorted(set(ports))]
        self.send = send
        self.interval_s = interval_s
        self.failures = failures
        self.note = note
        self._lock = threading.Lock()
        self._targets: dict[int, tuple[str, int]] | None = None
        self._restarts = _Restarts()
        self._wanted: str | None = None
        self._dirty = False
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(CHECK_TIMEOUT_S + 1)

    # -- what the run loop tells it ---------------------------------------------------------------

    def watch(self, published: dict[int, tuple[str, int]]) -> None:
        """The container runs (again), its ports reached there (host, port: worker.reach.dial_target):
        check them from the start."""
        with self._lock:
            self._targets = dict(published)
            for port in self.ports:
                port.state, port.failures, port.due = "starting", 0, 0.0
                port.detail = None if port.port in published else f"port {port.port} was not published"
            self._wanted = None
            self._restarts.restarting = False
            self._dirty = True
        self._changed.set()

    def restarting(self, count: int, reason: str) -> None:
        """The runtime restarts the container in place (the count-th time) because of reason."""
        with self._lock:
            self._targets = None
            self._restarts = _Restarts(count, True, reason)
            for port in self.ports:
                port.state, port.detail, port.failures = "starting", None, 0
            self._wanted = None
            self._dirty = True
        self._changed.set()

    def restart_wanted(self) -> str | None:
        with self._lock:
            return self._wanted

    def report(self) -> HealthReport:
        with self._lock:
            return self._report()

    def _report(self) -> HealthReport:
        return HealthReport(
            ports=tuple(PortHealth(p.port, p.state, p.detail) for p in self.ports),
            restarts=self._restarts.count, restarting=self._restarts.restarting, reason=self._restarts.reason,
        )

    # -- its thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        next_send = 0.0
        while not self._stopping.is_set():
            self._check_due()
            now = time.monotonic()
            with self._lock:
                report = self._report() if self._dirty and now >= next_send else None
                self._dirty = self._dirty and report is None
            if report is not None:
                try:
                    self.send(report)
                except Exception as e:  # the server is down or refuses: send how it stands later
                    log.warning("could not report the service's health: %s", e)
                    with self._lock:
                        self._dirty = True
                    next_send = time.monotonic() + RESEND_AFTER_S
            self._changed.wait(STARTING_EVERY_S / 2)
            self._changed.clear()

    def _check_due(self) -> None:
        with self._lock:
            targets = self._targets
        if targets is None:
            return
        for port in self.ports:
            if self._stopping.is_set():
                return
            address = targets.get(port.port)
            if address is None or time.monotonic() < port.due:
                continue
            if port.state == "starting":
                checks = port.checks
            else:
                checks = port.continuous
                if not checks:
                    continue  # checked until healthy; nothing repeats
            detail = self._first_failure(checks, address)
            with self._lock:
                if self._targets is not targets:
                    return  # restarted meanwhile: this result is of the container before
                self._settle(port, detail)

    def _first_failure(self, checks: tuple[HealthCheck, ...], address: tuple[str, int]) -> str | None:
        timeout = min(CHECK_TIMEOUT_S, self.interval_s)
        if not checks:
            return accepts_connections(address, timeout=timeout)
        for check in checks:
            detail = run_check(check, address, timeout=timeout)
            if detail is not None:
                return detail
        return None

    def _settle(self, port: _Port, detail: str | None) -> None:
        """Move a port's state after a round of its checks (under the lock)."""
        now = time.monotonic()
        before = port.state
        if detail is None:
            port.state, port.detail, port.failures = "healthy", None, 0
        elif port.state == "starting":
            if detail != port.detail and now - port.detail_sent_at >= STARTING_DETAIL_EVERY_S:
                port.detail, port.detail_sent_at = detail, now
                self._dirty = True
        else:
            port.state, port.detail = "unhealthy", detail
            port.failures += 1
            if port.failures >= self.failures and self._wanted is None:
                self._wanted = f"the health check of port {port.port} failed {port.failures} times in a row: {detail}"
        port.due = now + (STARTING_EVERY_S if port.state == "starting" else self.interval_s)
        if port.state != before:
            self._dirty = True
            self.note(f"[peergrid] port {port.port} is {port.state}" + (f": {detail}" if detail else ""))
