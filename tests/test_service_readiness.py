"""A node's health reports move a service's readiness: recorded per endpoint and attempt, shown in
the API, recorded as job events, and (with the workflow rules of issue 14) starting the ops that wait
on the service. Through the node API on a real SQLite store, with no containers."""

from __future__ import annotations

import pytest

from scheduler.endpoints import announce_gateway, mark_forwarded
from scheduler.models import Endpoint
from tests import factories
from tests.factories import bearer

REPORT = {"hostname": "rig", "cpu_count": 8, "memory_mb": 32000, "slots": 4, "agent_version": "test"}


def service_job(*, dependent: bool = False) -> dict:
    ops = [{"type": "container/run", "id": "web", "args": {
        "image": "busybox", "cmd": "httpd -f -p 8000", "restart_policy": {"policy": "always", "restart_tries": 3},
        "expose": [{"port": 8000, "health_checks": [
            {"type": "http", "path": "/", "method": "GET", "expected_status": 200, "continuous": True}]}]}}]
    if dependent:
        ops.append({"type": "container/run", "id": "client", "args": {"image": "busybox", "cmd": "true"},
                    "execution": {"depends_on": ["web"]}})
    return {"version": "0.1", "ops": ops}


class Service:
    """A service job claimed and started by a node, its endpoint forwarded by a gateway."""

    def __init__(self, client, core, *, dependent: bool = False):
        self.client, self.core = client, core
        _, node_token, _ = factories.node(core)
        self.node = bearer(node_token)
        assert client.post("/api/v1/node/register", json=REPORT, headers=self.node).status_code == 200
        self.email = f"owner-{factories.uuid.uuid4().hex[:6]}@example.com"
        _, token = factories.user(core, email=self.email)
        self.user = bearer(token)
        made = client.post("/api/v1/jobs", json=service_job(dependent=dependent), headers=self.user)
        assert made.status_code == 201, made.json
        self.job_id = made.json["id"]
        self.attempt_id = self.op("web")["attempts"][-1]["id"]
        claimed = client.post(f"/api/v1/node/attempts/{self.attempt_id}/claim", headers=self.node)
        assert claimed.status_code == 200, claimed.json
        assert client.post(f"/api/v1/node/attempts/{self.attempt_id}/started", headers=self.node).status_code == 200
        (self.label,) = [e["label"] for e in claimed.json["attempt"]["endpoints"]]
        with core.transaction() as session:
            announce_gateway(session, "gateway-1", "127.0.0.1:1", "ssh-ed25519 AAAA", lease_s=3600)
            mark_forwarded(session, self.label, "gateway-1")

    def job(self) -> dict:
        return self.client.get(f"/api/v1/jobs/{self.job_id}", headers=self.user).json

    def op(self, key: str) -> dict:
        return next(op for op in self.job()["ops"] if op["id"] == key)

    def job_with_events(self) -> list[dict]:
        with self.core.transaction() as session:
            from scheduler.events import job_events
            from scheduler.models import Job

            return [{"kind": e.kind, "message": e.message} for e in job_events(session, session.get(Job, self.job_id))]

    def report(self, state: str, detail: str | None = None, **rest) -> dict:
        body = {"ports": [{"port": 8000, "state": state, "detail": detail}], **rest}
        answer = self.client.post(f"/api/v1/node/attempts/{self.attempt_id}/health", json=body, headers=self.node)
        assert answer.status_code == 200, answer.json
        return answer.json


def test_a_forwarded_endpoint_is_ready_only_once_its_node_reports_it_healthy(client, core):
    service = Service(client, core)
    (endpoint,) = service.op("web")["endpoints"]
    assert (endpoint["ready"], endpoint["health"]) == (False, "starting")

    assert service.report("healthy")["ready"] is True

    (endpoint,) = service.op("web")["endpoints"]
    assert (endpoint["ready"], endpoint["health"], endpoint["health_detail"]) == (True, "healthy", None)
    assert service.job_with_events()[-1] == {"kind": "ready", "message": "web is ready: port 8000 passed its health "
                                             "checks and the gateway serves them."}


def test_an_unhealthy_report_and_a_restart_are_recorded_and_shown(client, core):
    service = Service(client, core)
    service.report("healthy")

    # When a continuous check fails
    assert service.report("unhealthy", "GET / answered 500, not 200")["ready"] is False
    op = service.op("web")
    (endpoint,) = op["endpoints"]
    assert (endpoint["ready"], endpoint["health"], endpoint["health_detail"]) == (False, "unhealthy", "GET / answered 500, not 200")
    # When it keeps failing and the node restarts the container in place
    why = "the health check of port 8000 failed 3 times in a row: GET / answered 500, not 200"
    service.report("starting", restarts=1, restarting=True, reason=why)
    op = service.op("web")
    assert (op["restarts"], op["restarting"], op["attempts"][-1]["restarts"]) == (1, True, 1)
    # When it runs again and passes its checks
    service.report("healthy", restarts=1, restarting=False, reason=why)
    op = service.op("web")
    assert (op["restarts"], op["restarting"], op["endpoints"][0]["ready"]) == (1, False, True)

    kinds = [(e["kind"], e["message"]) for e in service.job_with_events() if e["kind"] in ("ready", "unhealthy", "restarted")]
    assert kinds == [
        ("ready", "web is ready: port 8000 passed its health checks and the gateway serves them."),
        ("unhealthy", "web: port 8000 is unhealthy: GET / answered 500, not 200."),
        ("restarted", f"web: its container was restarted in place on node {_node_name(core)} (restart 1 of 3): {why}."),
        ("ready", "web is ready: port 8000 passed its health checks and the gateway serves them."),
    ]


def test_the_job_page_shows_the_badges_and_the_restarts(client, core):
    service = Service(client, core)
    service.report("unhealthy", "GET / answered 500, not 200", restarts=2)
    factories_login(client, service.email)

    page = client.get(f"/jobs/{service.job_id}").get_data(as_text=True)

    assert 'class="state state-unhealthy">unhealthy<' in page
    assert "restarts 2" in page and "GET / answered 500, not 200" in page


def test_a_health_report_of_an_attempt_the_node_does_not_hold_is_refused(client, core):
    service = Service(client, core)
    _, other_token, _ = factories.node(core)
    client.post("/api/v1/node/register", json=REPORT, headers=bearer(other_token))

    answer = client.post(f"/api/v1/node/attempts/{service.attempt_id}/health",
                         json={"ports": [{"port": 8000, "state": "healthy"}]}, headers=bearer(other_token))

    assert answer.status_code == 409
    with core.transaction() as session:
        (row,) = session.query(Endpoint).all()
        assert row.health.value == "starting"


def test_an_op_that_depends_on_a_service_is_queued_once_it_is_ready(client, core):
    service = Service(client, core, dependent=True)
    assert service.op("client")["state"] == "pending"

    service.report("healthy")

    assert service.op("client")["state"] == "queued"


def _node_name(core) -> str:
    with core.transaction() as session:
        from scheduler.models import Node

        (node,) = [n for n in session.query(Node).all() if n.hostname == "rig"]
        return node.name


def factories_login(client, email: str) -> None:
    from tests.test_dashboard import sign_in

    assert sign_in(client, email).status_code == 302
