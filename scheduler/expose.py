"""What an op exposes: its ports, each with its service type and health checks, as Nosana writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from protocol.health_checks import HealthCheck
from scheduler.errors import Problem

SERVICE_TYPES = ("web", "api", "webapi", "websocket", "none")
HEALTH_CHECK_TYPES = ("http", "websocket")
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE")
# The fields of each kind of check, as Nosana's types name them.
HTTP_CHECK_FIELDS = ("type", "path", "method", "expected_status", "expected_response", "headers", "body", "continuous")
WEBSOCKET_CHECK_FIELDS = ("type", "expected_response", "continuous")
PORT_FIELDS = ("port", "type", "health_checks")
# "8000-8010", the older SDK's way of exposing a range of ports.
_RANGE = re.compile(r"^([0-9]+)-([0-9]+)$")
# A whole-string literal, resolved when the op is offered: %%ops.ID.results.KEY%% or %%global.…%%.
_LITERAL = re.compile(r"^%%(ops|global)\.[^%]+%%$")
LOWEST_PORT, HIGHEST_PORT = 1, 65535


@dataclass(frozen=True)
class ExposedPort:
    """A port (or a range of ports, first to last) an op serves, with what kind of service it is."""

    port: int
    last: int
    type: str = "api"
    health_checks: tuple[HealthCheck, ...] = ()

    @property
    def ports(self) -> range:
        return range(self.port, self.last + 1)


@dataclass(frozen=True)
class Exposure:
    """An op's `expose` read: its ports, and whether a literal adds more once it resolves."""

    ports: tuple[ExposedPort, ...] = ()
    pending: bool = False

    def numbers(self) -> frozenset[int] | None:
        """Every port number exposed; None where a literal decides some of them."""
        if self.pending:
            return None
        return frozenset(n for p in self.ports for n in p.ports)


def read_expose(path: str, expose: Any, problems: list[Problem], refuse_unknown: Callable) -> Exposure:
    """Read an op's `expose`, adding each mistake to problems with its JSON path.

    refuse_unknown(path, value, known) adds a problem for each key of value that is not known.
    """
    if expose is None:
        return Exposure()
    if isinstance(expose, str) and _LITERAL.match(expose):
        return Exposure(pending=True)
    if _is_spread(expose):
        return Exposure(pending=True)
    items = expose if isinstance(expose, list) else [expose]
    where = (lambda i: f"{path}[{i}]") if isinstance(expose, list) else (lambda i: path)
    ports: list[ExposedPort] = []
    pending = False
    for i, item in enumerate(items):
        if (isinstance(item, str) and _LITERAL.match(item)) or _is_spread(item):
            pending = True
            continue
        port = _read_item(where(i), item, problems, refuse_unknown)
        if port is not None:
            ports.append(port)
    _check_unique(path, ports, problems)
    return Exposure(ports=tuple(ports), pending=pending)


def _read_item(path: str, item: Any, problems: list[Problem], refuse_unknown: Callable) -> ExposedPort | None:
    if isinstance(item, dict):
        refuse_unknown(path, item, PORT_FIELDS)
        if "port" not in item:
            problems.append(Problem(f"{path}.port", "Missing: the port number, like 8080, or a range like \"8000-8010\"."))
            return None
        bounds = _read_port(f"{path}.port", item["port"], problems)
        kind = item.get("type", "api")
        if kind not in SERVICE_TYPES:
            problems.append(Problem(f"{path}.type", f"Unknown service type {kind!r}: use one of {', '.join(SERVICE_TYPES)}."))
            kind = "api"
        checks = _read_checks(f"{path}.health_checks", item.get("health_checks"), problems, refuse_unknown)
        if bounds is None:
            return None
        return ExposedPort(port=bounds[0], last=bounds[1], type=kind, health_checks=checks)
    if isinstance(item, (int, str)) and not isinstance(item, bool):
        bounds = _read_port(path, item, problems)
        return None if bounds is None else ExposedPort(port=bounds[0], last=bounds[1])
    problems.append(Problem(
        path,
        'expose takes a port number, a range like "8000-8010", {"port", "type", "health_checks"}, '
        "a literal, or a list of these.",
    ))
    return None


def _read_port(path: str, value: Any, problems: list[Problem]) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif isinstance(value, str) and _RANGE.match(value):
        first, last = (int(n) for n in _RANGE.match(value).groups())
        if first >= last:
            problems.append(Problem(path, f"The range {value!r} must go from a lower port to a higher one, like \"8000-8010\"."))
            return None
    else:
        problems.append(Problem(path, f"{value!r} is not a port: write a number like 8080 or a range like \"8000-8010\"."))
        return None
    if first < LOWEST_PORT or last > HIGHEST_PORT:
        problems.append(Problem(path, f"A port is a number from {LOWEST_PORT} to {HIGHEST_PORT}, not {value!r}."))
        return None
    return first, last


def _read_checks(path: str, checks: Any, problems: list[Problem], refuse_unknown: Callable) -> tuple[HealthCheck, ...]:
    if checks is None:
        return ()
    if not isinstance(checks, list):
        problems.append(Problem(path, "health_checks must be a list of checks."))
        return ()
    read = []
    for i, check in enumerate(checks):
        where = f"{path}[{i}]"
        if not isinstance(check, dict):
            problems.append(Problem(where, 'A health check is an object, like {"type": "http", "path": "/", '
                                           '"method": "GET", "expected_status": 200, "continuous": false}.'))
            continue
        kind = check.get("type")
        if kind not in HEALTH_CHECK_TYPES:
            problems.append(Problem(f"{where}.type", f"Unknown health check type {kind!r}: use http or websocket."))
            continue
        before = len(problems)
        if kind == "http":
            result = _read_http_check(where, check, problems, refuse_unknown)
        else:
            result = _read_websocket_check(where, check, problems, refuse_unknown)
        if len(problems) == before:
            read.append(result)
    return tuple(read)


def _read_continuous(where: str, check: dict, problems: list[Problem]) -> bool:
    continuous = check.get("continuous", False)
    if not isinstance(continuous, bool):
        problems.append(Problem(f"{where}.continuous", "continuous must be true or false."))
        return False
    return continuous


def _read_http_check(where: str, check: dict, problems: list[Problem], refuse_unknown: Callable) -> HealthCheck:
    refuse_unknown(where, check, HTTP_CHECK_FIELDS)
    path = check.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        problems.append(Problem(f"{where}.path", 'path must be the request\'s path, starting with "/".'))
    method = check.get("method", "GET")
    if method not in HTTP_METHODS:
        problems.append(Problem(f"{where}.method", f"Unknown method {method!r}: use one of {', '.join(HTTP_METHODS)}."))
    status = check.get("expected_status")
    if status is None:
        problems.append(Problem(f"{where}.expected_status", "Missing: the HTTP status a healthy service answers, like 200."))
    elif not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        problems.append(Problem(f"{where}.expected_status", "expected_status must be an HTTP status, from 100 to 599."))
    headers = check.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(Problem(f"{where}.headers", "headers must be an object of header names to strings."))
        headers = {}
    expected = check.get("expected_response")
    if expected is not None and not isinstance(expected, str):
        problems.append(
            Problem(f"{where}.expected_response", "expected_response must be text the healthy answer's body contains.")
        )
        expected = None
    return HealthCheck(
        type="http",
        continuous=_read_continuous(where, check, problems),
        path=path if isinstance(path, str) else "/",
        method=method if isinstance(method, str) else "GET",
        expected_status=status if isinstance(status, int) else None,
        headers=tuple(headers.items()),
        body=check.get("body"),
        expected_response=expected,
    )


def _read_websocket_check(where: str, check: dict, problems: list[Problem], refuse_unknown: Callable) -> HealthCheck:
    refuse_unknown(where, check, WEBSOCKET_CHECK_FIELDS)
    expected = check.get("expected_response")
    if not isinstance(expected, str):
        problems.append(Problem(f"{where}.expected_response", "Missing: the message a healthy service answers, as a string."))
        expected = None
    return HealthCheck(type="websocket", continuous=_read_continuous(where, check, problems), expected_response=expected)


def _check_unique(path: str, ports: list[ExposedPort], problems: list[Problem]) -> None:
    """Refuse a port exposed twice, or ranges that overlap, as Nosana does."""
    taken: list[ExposedPort] = []
    for port in ports:
        clash = next((t for t in taken if port.port <= t.last and port.last >= t.port), None)
        if clash is not None:
            problems.append(Problem(path, f"{_shown(port)} is exposed twice (it overlaps {_shown(clash)}): expose each port once."))
        else:
            taken.append(port)


def _shown(port: ExposedPort) -> str:
    return f"port {port.port}" if port.port == port.last else f"ports {port.port}-{port.last}"


def _is_spread(value: Any) -> bool:
    return (
        isinstance(value, dict) and set(value) == {"__spread__"}
        and isinstance(value["__spread__"], str) and bool(_LITERAL.match(value["__spread__"]))
    )
