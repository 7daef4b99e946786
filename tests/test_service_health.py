"""A service's health checks, as the worker runs them (worker/health.py), against real small servers
on loopback: an HTTP server, a WebSocket server, plain listening sockets; the health report's wire
form; and when the runtime's restart policy restarts a container."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.server import serve

from protocol.health_checks import HealthCheck
from protocol.services import HealthReport, PortHealth
from protocol.wire import ProtocolError
from worker.health import (
    HealthMonitor,
    accepts_connections,
    http_check,
    port_checks,
    websocket_check,
)
from worker.runtime import RestartPolicy, restart_policy


class Service:
    """An HTTP server on loopback that records what it was asked and answers as told."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.text = "all good"
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                service.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                         "body": self.rfile.read(length).decode() if length else None})
                body = service.text.encode()
                self.send_response(service.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def service():
    s = Service()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _fresh(request):
    if "service" in request.fixturenames:
        s = request.getfixturevalue("service")
        s.requests.clear()
        s.status, s.text = 200, "all good"


def closed_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


# -- HTTP checks -----------------------------------------------------------------------------------


def test_an_http_check_sends_its_method_path_headers_and_json_body(service):
    check = HealthCheck(type="http", method="POST", path="/v1/ready?deep=1", expected_status=200,
                  headers=(("X-Probe", "peergrid"),), body={"prompt": "hi"})

    assert http_check(check, service.address) is None

    (asked,) = service.requests
    assert (asked["method"], asked["path"]) == ("POST", "/v1/ready?deep=1")
    assert asked["headers"]["X-Probe"] == "peergrid" and asked["headers"]["Content-Type"] == "application/json"
    assert json.loads(asked["body"]) == {"prompt": "hi"}


def test_an_http_check_fails_on_another_status_and_says_which(service):
    service.status = 503

    detail = http_check(HealthCheck(type="http", path="/health", expected_status=200), service.address)

    assert detail == "GET /health answered 503, not 200"


def test_an_http_check_with_an_expected_response_needs_it_in_the_body(service):
    assert http_check(HealthCheck(type="http", expected_status=200, expected_response="good"), service.address) is None
    detail = http_check(HealthCheck(type="http", expected_status=200, expected_response="ok: true"), service.address)
    assert detail == "GET / answered without 'ok: true'"


def test_an_http_check_of_a_port_nothing_listens_on_says_it_did_not_answer():
    detail = http_check(HealthCheck(type="http", expected_status=200), closed_port(), timeout=1)
    assert detail.startswith("GET / did not answer (")


# -- WebSocket checks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def websocket_server():
    with serve(lambda ws: ws.send("pong"), "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.socket.getsockname()[:2]
        server.shutdown()


def test_a_websocket_check_passes_when_the_first_message_is_the_expected_one(websocket_server):
    assert websocket_check(HealthCheck(type="websocket", expected_response="pong"), websocket_server) is None


def test_a_websocket_check_fails_on_another_message_and_says_what_came(websocket_server):
    detail = websocket_check(HealthCheck(type="websocket", expected_response="ready"), websocket_server)
    assert detail == "the WebSocket at / sent 'pong', not 'ready'"


def test_a_websocket_check_of_an_http_server_says_it_did_not_open(service):
    detail = websocket_check(HealthCheck(type="websocket", expected_response="pong"), service.address, timeout=2)
    assert detail.startswith("the WebSocket at / did not open (")


# -- ports without checks --------------------------------------------------------------------------


def test_a_port_without_checks_is_healthy_once_it_accepts_connections():
    with socket.create_server(("127.0.0.1", 0)) as listening:
        assert accepts_connections(listening.getsockname()[:2]) is None
    assert accepts_connections(closed_port(), timeout=1).startswith("it does not accept connections (")


def test_a_port_that_accepts_and_closes_at_once_is_not_healthy():
    # As the engine's proxy on a published port does while nothing listens in the container
    listening = socket.create_server(("127.0.0.1", 0))

    def hang_up():
        while True:
            try:
                connection, _ = listening.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        assert "closes them at once" in accepts_connections(listening.getsockname()[:2])
    finally:
        listening.close()


def test_checks_are_read_per_port_from_nosanas_expose_forms():
    expose = [8080, {"port": 9000, "type": "api", "health_checks": [
        {"type": "http", "path": "/health", "method": "GET", "expected_status": 200, "continuous": True},
        {"type": "websocket", "expected_response": "pong"}]}, {"port": "7000-7001", "health_checks": []}]

    checks = port_checks(expose)

    assert set(checks) == {9000, 7000, 7001} and checks[7000] == ()
    http, ws = checks[9000]
    assert (http.type, http.path, http.expected_status, http.continuous) == ("http", "/health", 200, True)
    assert (ws.type, ws.expected_response, ws.continuous) == ("websocket", "pong", False)


# -- the monitor -----------------------------------------------------------------------------------


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)
    return value


def test_the_monitor_reports_healthy_then_unhealthy_and_wants_a_restart_after_failures_in_a_row(service):
    sent: list[HealthReport] = []
    expose = [{"port": 80, "health_checks": [{"type": "http", "path": "/", "expected_status": 200, "continuous": True}]}]
    monitor = HealthMonitor([80], expose, sent.append, interval_s=0.05, failures=3)
    monitor.start()
    try:
        # When the service's port is published and it answers 200
        monitor.watch({80: ("127.0.0.1", service.address[1])})
        wait_for(lambda: sent and sent[-1].ports[0].state == "healthy")
        assert monitor.restart_wanted() is None
        # When it starts answering 500: unhealthy at once, and a restart wanted after three failures
        service.status = 500
        wait_for(lambda: sent[-1].ports[0].state == "unhealthy")
        assert sent[-1].ports[0].detail == "GET / answered 500, not 200"
        reason = wait_for(monitor.restart_wanted)
        assert reason == "the health check of port 80 failed 3 times in a row: GET / answered 500, not 200"
        # When the runtime restarts it: restarting, starting again, then healthy once it is watched again
        monitor.restarting(1, reason)
        wait_for(lambda: sent[-1].restarting)
        assert (sent[-1].restarts, sent[-1].ports[0].state, monitor.restart_wanted()) == (1, "starting", None)
        service.status = 200
        monitor.watch({80: ("127.0.0.1", service.address[1])})
        wait_for(lambda: not sent[-1].restarting and sent[-1].ports[0].state == "healthy")
        assert sent[-1].restarts == 1 and sent[-1].reason == reason
    finally:
        monitor.stop()


def test_a_check_that_is_not_continuous_runs_until_it_passes_and_not_after(service):
    sent: list[HealthReport] = []
    expose = [{"port": 80, "health_checks": [{"type": "http", "path": "/ready", "expected_status": 200}]}]
    monitor = HealthMonitor([80], expose, sent.append, interval_s=0.05)
    service.status = 404
    monitor.start()
    try:
        monitor.watch({80: ("127.0.0.1", service.address[1])})
        wait_for(lambda: sent and sent[-1].ports[0].detail == "GET /ready answered 404, not 200")
        assert sent[-1].ports[0].state == "starting"
        service.status = 200
        wait_for(lambda: sent[-1].ports[0].state == "healthy")
        asked = len(service.requests)
        service.status = 500
        time.sleep(0.3)
        assert len(service.requests) == asked and sent[-1].ports[0].state == "healthy"
    finally:
        monitor.stop()


def test_the_monitor_sends_again_what_the_server_did_not_take(service):
    tries: list[HealthReport] = []

    def flaky(report):
        tries.append(report)
        if len(tries) == 1:
            raise OSError("the server is down")

    monitor = HealthMonitor([80], None, flaky, interval_s=0.05)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        monitor.start()
        try:
            monitor.watch({80: ("127.0.0.1", listening.getsockname()[1])})
            wait_for(lambda: len(tries) >= 2 and tries[-1].ports[0].state == "healthy", timeout=15)
        finally:
            monitor.stop()


# -- restart policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,exit_code,restarts,again", [
    ("no", 1, 0, False),
    ("always", 0, 0, True),
    ("unless-stopped", 0, 5, True),
    ("on-failure", 0, 0, False),
    ("on-failure", 2, 0, False),  # the server tries it again as a new attempt
    ({"policy": "always", "restart_tries": 2}, 0, 1, True),
    ({"policy": "always", "restart_tries": 2}, 0, 2, False),
    ({"policy": "on-failure", "restart_tries": 1}, 1, 1, False),
])
def test_when_a_container_that_exits_is_restarted_in_place(policy, exit_code, restarts, again):
    assert restart_policy({"restart_policy": policy}).after_exit(exit_code, restarts) is again


def test_a_failing_health_check_restarts_under_any_policy_but_no():
    assert not RestartPolicy("no").after_unhealthy(0)
    assert restart_policy({"restart_policy": "on-failure"}).after_unhealthy(0)
    assert not restart_policy({"restart_policy": {"policy": "always", "restart_tries": 1}}).after_unhealthy(1)


# -- the health report on the wire -----------------------------------------------------------------


def test_the_health_report_goes_over_the_wire_and_back():
    report = HealthReport(ports=(PortHealth(8000, "healthy"), PortHealth(9000, "unhealthy", "GET / answered 500, not 200")),
                          restarts=2, restarting=True, reason="it exited with code 1")

    assert HealthReport.from_wire(json.loads(json.dumps(report.to_wire()))) == report


@pytest.mark.parametrize("body,says", [
    ({"ports": [{"port": 8000, "state": "fine"}]}, "health state must be one of"),
    ({"ports": [{"port": 0, "state": "healthy"}]}, "port must be a whole number"),
    ({"ports": [{"port": 80, "state": "healthy"}, {"port": 80, "state": "healthy"}]}, "sent once"),
    ({"ports": {"80": "healthy"}}, "ports must be a list"),
    ({"restarts": -1}, "restarts must be a whole number"),
    ({"restarting": "yes"}, "restarting must be true or false"),
])
def test_a_health_report_that_is_not_one_is_refused_with_what_is_wrong(body, says):
    with pytest.raises(ProtocolError, match=says):
        HealthReport.from_wire(body)
