"""Health checks and restarts on a real stack: busybox httpd in a container behind the gateway, its
health checked through the engine's published port, restarted in place when a continuous check
keeps failing, and a container that exits restarted as `always` says. One stack for the module."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from tests.factories import hello_world
from tests.stack import embedded_stack

# Serves /www/index.html; the first time the container runs (the marker is kept in its own
# filesystem, so a restart in place finds it), it deletes the page a few seconds later.
HTTPD = ("mkdir -p /www && echo hello > /www/index.html && "
         "if [ -n \"$BREAK\" ] && [ ! -e /ran-before ]; then touch /ran-before; (sleep 3; rm /www/index.html) & fi; "
         "exec httpd -f -p 8000 -h /www")
CHECK = {"type": "http", "path": "/index.html", "method": "GET", "expected_status": 200}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sqlite_template, test_image):
    root = tmp_path_factory.mktemp("health-e2e")
    database = root / "store.sqlite"
    database.write_bytes(sqlite_template.read_bytes())
    with embedded_stack(root, f"sqlite:///{database}") as stack:
        stack.start_gateway()
        stack.start_worker(stack.node_token, "--job-network", "bridge",
                           env={"PEERGRID_HEALTH_INTERVAL": "1", "PEERGRID_HEALTH_FAILURES": "2"})
        stack.image = test_image
        yield stack


def service(image: str, *, breaks: bool = False, restart_policy=None, check=CHECK) -> dict:
    doc = hello_world(image, cmd=HTTPD)
    args = doc["ops"][0]["args"]
    args["expose"] = [{"port": 8000, "type": "web", "health_checks": [{**check, "continuous": breaks}]}]
    if breaks:
        args["env"] = {"BREAK": "1"}
    if restart_policy is not None:
        args["restart_policy"] = restart_policy
    return doc


def until(stack, job_id: int, condition, *, timeout: float = 60, what: str = "it") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = stack.api.get(f"/jobs/{job_id}")
        if condition(job):
            return job
        assert time.monotonic() < deadline, f"{what} never happened: {json.dumps(job)[:3000]}\n{stack.logs()[-6000:]}"
        time.sleep(0.1)


def events(stack, job_id: int, kind: str) -> list[str]:
    from scheduler.events import job_events
    from scheduler.models import Job

    with stack.core.transaction() as session:
        return [e.message for e in job_events(session, session.get(Job, job_id)) if e.kind == kind]


def cli(stack, *args: str) -> str:
    env = {**stack.env, "PEERGRID_SERVER": stack.url, "PEERGRID_TOKEN": stack.api.http.headers["Authorization"].split()[1]}
    done = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    return done.stdout


def test_a_service_whose_health_check_passes_is_ready(stack):
    # When busybox httpd runs with a health check of a page it serves
    began = time.monotonic()
    job_id = stack.api.post("/jobs", service(stack.image)).json()["id"]

    # Then its endpoint becomes ready once the check passed, and its job says so
    job = until(stack, job_id, lambda j: j["ops"][0]["endpoints"] and j["ops"][0]["endpoints"][0]["ready"], what="ready")
    print(f"start to ready with a health check: {time.monotonic() - began:.2f} s")
    (endpoint,) = job["ops"][0]["endpoints"]
    assert (endpoint["health"], endpoint["health_detail"], job["ops"][0]["restarts"]) == ("healthy", None, 0)
    assert events(stack, job_id, "ready") == ["hello-world is ready: port 8000 passed its health checks and the gateway serves them."]
    # And the CLI shows it ready
    assert f"hello-world  8000  {endpoint['url']}  ready" in cli(stack, "job", "endpoints", str(job_id))
    assert "port 8000: ready" in cli(stack, "job", "status", str(job_id))

    assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
    stack.api.wait(job_id)


def test_an_http_check_with_an_expected_response_is_ready_only_on_a_body_that_has_it(stack):
    # When a service is checked for the text its page has, it becomes ready
    right = stack.api.post("/jobs", service(stack.image, check={**CHECK, "expected_response": "hello"})).json()["id"]
    until(stack, right, lambda j: j["ops"][0]["endpoints"] and j["ops"][0]["endpoints"][0]["ready"], what="ready")
    assert stack.api.post(f"/jobs/{right}/cancel").status_code == 200
    stack.api.wait(right)

    # And when it is checked for text its page has not, it stays unready and says what the answer lacked
    wrong = stack.api.post("/jobs", service(stack.image, check={**CHECK, "expected_response": "goodbye"})).json()["id"]
    job = until(stack, wrong, lambda j: j["ops"][0]["endpoints"] and j["ops"][0]["endpoints"][0]["health_detail"],
                what="a health detail")
    (endpoint,) = job["ops"][0]["endpoints"]
    assert not endpoint["ready"] and endpoint["health"] != "healthy"
    assert "answered without 'goodbye'" in endpoint["health_detail"]
    assert stack.api.post(f"/jobs/{wrong}/cancel").status_code == 200
    stack.api.wait(wrong)


def test_a_continuous_check_that_keeps_failing_restarts_the_same_container(stack):
    # Given a service whose page goes away a few seconds after it first starts
    doc = service(stack.image, breaks=True, restart_policy={"policy": "on-failure", "restart_tries": 2})
    job_id = stack.api.post("/jobs", doc).json()["id"]
    until(stack, job_id, lambda j: j["ops"][0]["endpoints"] and j["ops"][0]["endpoints"][0]["ready"], what="ready")
    (container,) = stack.job_containers(job_id, running=True)

    # When its continuous check fails twice in a row, the container is restarted in place
    job = until(stack, job_id, lambda j: j["ops"][0]["restarts"] >= 1, what="a restart")
    # Then, the page back (the marker kept in the same container's filesystem), it is ready again
    job = until(stack, job_id, lambda j: not j["ops"][0]["restarting"] and j["ops"][0]["endpoints"][0]["ready"],
                what="ready after the restart")
    assert job["ops"][0]["restarts"] == 1 and job["ops"][0]["state"] == "running"
    assert stack.job_containers(job_id, running=True) == [container]
    assert events(stack, job_id, "unhealthy") == ["hello-world: port 8000 is unhealthy: GET /index.html answered 404, not 200."]
    (restarted,) = events(stack, job_id, "restarted")
    assert "(restart 1 of 2): the health check of port 8000 failed 2 times in a row: GET /index.html answered 404" in restarted
    assert len(events(stack, job_id, "ready")) == 2
    assert "restarts 1" in cli(stack, "job", "endpoints", str(job_id))
    # And its URL serves the restarted container, which the engine publishes on another port
    host = job["ops"][0]["endpoints"][0]["url"].removeprefix("http://").rstrip("/")
    answer = requests.get(f"http://127.0.0.1:{stack.gateway_port}/index.html", headers={"Host": host}, timeout=10)
    assert (answer.status_code, answer.text) == (200, "hello\n")

    assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
    stack.api.wait(job_id)


def test_always_restarts_a_container_that_exits_up_to_its_restart_tries(stack):
    doc = hello_world(stack.image, cmd="echo run; sleep 0.5; exit 3")
    doc["ops"][0]["args"]["restart_policy"] = {"policy": "always", "restart_tries": 2}

    job = stack.api.wait(stack.api.post("/jobs", doc).json()["id"], timeout=60)

    assert job["state"] == "failed" and job["ops"][0]["exit_code"] == 3
    assert job["ops"][0]["restarts"] == 2 and len(job["ops"][0]["attempts"]) == 1
    assert [m.split(": ", 1)[1] for m in events(stack, job["id"], "restarted")] == [
        "its container was restarted in place on node rig (restart 1 of 2): it exited with code 3.",
        "its container was restarted in place on node rig (restart 2 of 2): it exited with code 3."]
    lines = stack.api.get(f"/jobs/{job['id']}/logs")["lines"]
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == ["run", "run", "run"]
