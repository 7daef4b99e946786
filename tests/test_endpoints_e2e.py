"""A service's port becomes a URL: a real HTTP server in a container, served through the gateway
over the worker's SSH tunnel, gone when the job is cancelled, and placed again (at a new URL)
when its worker is killed; on the embedded set-up and on the scaled one."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests
from sqlalchemy import select

from scheduler.models import Endpoint, Node
from tests import factories
from tests.factories import hello_world
from tests.stack import Api, Stack, embedded_stack

HTTPD = "mkdir -p /www && echo hello > /www/index.html && httpd -f -p 8000 -h /www"


def _endpoint(api, job_id: int, *, ready: bool, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}")
        endpoints = job["ops"][0]["endpoints"]
        if endpoints and endpoints[0]["ready"] == ready:
            return endpoints[0]
        if job["state"] in ("succeeded", "failed", "cancelled") and ready:
            raise AssertionError(f"job {job_id} ended ({job['state']}) before its endpoint was ready: {job}")
        time.sleep(0.1)
    raise AssertionError(f"the endpoint of job {job_id} never became {'ready' if ready else 'not ready'}: {job}")


def _through_gateway(stack, url: str, path: str = "/", *, port: int | None = None) -> requests.Response:
    host = url.removeprefix("http://").rstrip("/")
    return requests.get(f"http://127.0.0.1:{port or stack.gateway_port}{path}", headers={"Host": host}, timeout=10)


def _answers(stack, url: str, status: int, *, port: int | None = None, timeout: float = 30) -> requests.Response:
    """The gateway's answer for url once it is status (or the last one, for the assertion to show)."""
    deadline = time.monotonic() + timeout
    while (answer := _through_gateway(stack, url, port=port)).status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
    return answer


def test_a_busybox_httpd_service_is_served_at_its_url_until_cancelled(tmp_path, sqlite_url, test_image):
    with embedded_stack(tmp_path, sqlite_url) as stack:
        # Given a gateway, and a worker whose containers have a network
        stack.start_gateway()
        stack.start_worker(stack.node_token, "--job-network", "bridge")
        api = stack.api
        doc = hello_world(test_image, cmd=HTTPD)
        doc["ops"][0]["args"]["expose"] = 8000

        env = {**stack.env, "PEERGRID_SERVER": stack.url,
               "PEERGRID_TOKEN": stack.api.http.headers["Authorization"].split()[1]}
        definition = tmp_path / "httpd.json"
        definition.write_text(json.dumps(doc))

        # When a job runs busybox httpd exposing port 8000, submitted with --wait-ready
        began = time.monotonic()
        submitted = subprocess.run([sys.executable, "-m", "cli", "job", "submit", str(definition), "--wait-ready"],
                                   env=env, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, (submitted, stack.logs())
        job_id = int(submitted.stdout.split()[0])
        endpoint = _endpoint(api, job_id, ready=True)
        # Then the submit printed its URL once ready
        assert f"hello-world  8000  {endpoint['url']}" in submitted.stdout

        # Then its URL, under the gateway's localhost domain, serves what httpd serves
        assert endpoint["url"].endswith(f".localhost:{stack.gateway_port}/") and endpoint["private"] is False
        deadline = time.monotonic() + 20
        while (answer := _through_gateway(stack, endpoint["url"])).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # the tunnel is up; httpd may still be starting
        assert answer.status_code == 200, (answer.status_code, answer.text, stack.logs())
        assert answer.text == "hello\n"
        print(f"start to first answer: {time.monotonic() - began:.2f} s")
        # And `peergrid job endpoints` lists it
        listed = subprocess.run([sys.executable, "-m", "cli", "job", "endpoints", str(job_id)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and f"8000  {endpoint['url']}  ready" in listed.stdout, listed
        as_json = subprocess.run([sys.executable, "-m", "cli", "job", "endpoints", str(job_id), "--json"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert json.loads(as_json.stdout)[0]["url"] == endpoint["url"]
        timings = []
        for _ in range(20):
            t = time.perf_counter()
            assert _through_gateway(stack, endpoint["url"]).text == "hello\n"
            timings.append(time.perf_counter() - t)
        print(f"median request through the gateway: {sorted(timings)[10] * 1000:.1f} ms")

        # When the job is cancelled
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
        api.wait(job_id)

        # Then the URL answers 404 with a sentence, and no forward of it is left
        deadline = time.monotonic() + 20
        while (gone := _through_gateway(stack, endpoint["url"])).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone.status_code == 404 and "its op has ended" in gone.text, (gone.status_code, gone.text)
        with stack.core.transaction() as session:
            (row,) = session.scalars(select(Endpoint)).all()
            assert row.closed_at is not None and row.forwards == []
        assert api.get(f"/jobs/{job_id}")["ops"][0]["endpoints"][0]["ready"] is False
        # And the worker, once it has stopped the container, cancels its forward too
        deadline = time.monotonic() + 30
        while "stopped forwarding endpoint" not in (log := (tmp_path / "worker.log").read_text()):
            assert time.monotonic() < deadline, log
            time.sleep(0.2)


def test_a_client_reaches_its_server_by_op_id_alias_and_endpoint_literal(tmp_path, sqlite_url, test_image):
    with embedded_stack(tmp_path, sqlite_url) as stack:
        # Given a gateway and a worker whose containers have a network, with room for two ops
        stack.start_gateway()
        stack.start_worker(stack.node_token, "--job-network", "bridge", "--slots", "2")
        # And a workflow: busybox httpd as a service, and a client that starts once it is ready and
        # fetches from it by its op id, by its alias, and by its endpoint literal
        server = {"type": "container/run", "id": "server",
                  "args": {"image": test_image, "cmd": HTTPD, "expose": 8000, "aliases": ["web"]}}
        client = {"type": "container/run", "id": "client", "execution": {"depends_on": ["server"]}, "args": {
            "image": test_image,
            "env": {"URL": "%%ops.server.endpoint.8000%%", "HOST": "%%ops.server.host%%"},
            "cmd": 'echo "by-id $(wget -q -O- http://$HOST:8000/)"; echo "by-alias $(wget -q -O- http://web:8000/)"; '
                   'echo "by-literal $URL $(wget -q -O- ${URL}index.html)"',
        }}
        api = stack.api
        job_id = api.post("/jobs", {"version": "0.1", "type": "container", "ops": [server, client]}).json()["id"]

        # When the client has run
        deadline = time.monotonic() + 90
        while (job := api.get(f"/jobs/{job_id}"))["ops"][1]["state"] not in ("succeeded", "failed", "skipped"):
            assert time.monotonic() < deadline, (job, stack.logs())
            time.sleep(0.2)

        # Then it got the server's page all three ways, while the server ran on
        lines = [line["text"] for line in api.get(f"/jobs/{job_id}/logs", op="client")["lines"]]
        assert job["ops"][1]["state"] == "succeeded", (job, lines, stack.logs())
        assert "by-id hello" in lines and "by-alias hello" in lines, lines
        # On the server's own node its endpoint literal is its address on the job network: the
        # gateway's localhost URL is the host's loopback, which no container reaches.
        assert "by-literal http://server:8000/ hello" in lines, lines
        assert job["ops"][0]["state"] == "running" and job["state"] == "running"
        # And that literal is the URL at which the gateway serves the server to everyone else
        url = job["ops"][0]["endpoints"][0]["url"]
        assert _through_gateway(stack, url, "/index.html").text == "hello\n"
        # And the job's network is there while its server runs, and gone once the job is cancelled
        network = f"peergrid-{stack.cluster()}-node{job['ops'][0]['node']['id']}-job-{job_id}"
        assert _networks(network) == [network]
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
        deadline = time.monotonic() + 30
        while _networks(network) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _networks(network) == [], stack.logs()


def _networks(name: str) -> list[str]:
    listed = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}", "--filter", f"name=^{name}$"],
                            capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_a_node_without_a_job_network_leaves_services_to_other_nodes_and_says_why(tmp_path, sqlite_url, test_image):
    with embedded_stack(tmp_path, sqlite_url, worker=True) as stack:
        # Given a node whose containers run without a network, and a service job and a plain one
        doc = hello_world(test_image, cmd=HTTPD)
        doc["ops"][0]["args"]["expose"] = 8000
        service = stack.api.post("/jobs", doc).json()["id"]
        plain = stack.api.wait(stack.api.post("/jobs", hello_world(test_image)).json()["id"])

        # Then it runs the plain job, leaves the service waiting for a node that can serve it,
        # and says in its log why
        assert plain["state"] == "succeeded", (plain, stack.logs())
        job = stack.api.get(f"/jobs/{service}")
        assert job["state"] == "queued" and job["ops"][0]["attempts"][0]["state"] == "queued", job
        assert any(e["kind"] == "waiting" and "--job-network none" in e["message"] for e in job["events"]), job
        log = (tmp_path / "worker.log").read_text()
        assert "this node cannot serve endpoints" in log and "--job-network none" in log, log


def _registered(stack, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with stack.core.transaction() as session:
            if session.scalar(select(Node.registered_at).where(Node.name == name)) is not None:
                return
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


@pytest.fixture(params=["embedded", "scaled"])
def set_up(request, tmp_path, sqlite_url) -> Stack:
    """A stack with web, scheduler and the node `rig` (its worker not started): on SQLite and the
    embedded broker, or on PostgreSQL and Redis; the web, scheduler, gateways and worker are
    processes of their own either way."""
    if request.param == "embedded":
        database_url, broker_url = sqlite_url, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    else:
        database_url, broker_url = request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
    with Stack(tmp_path, database_url=database_url, broker_url=broker_url) as stack:
        stack.scaled = request.param == "scaled"
        stack.start_web()
        stack.start_scheduler()
        _, stack.node_token, _ = factories.node(stack.core, name="rig")
        _, token = factories.user(stack.core)
        stack.api = Api(stack.url, token)
        yield stack


def test_killing_the_worker_under_a_service_takes_its_endpoint_away_and_places_the_op_again(set_up, test_image):
    stack = set_up
    # Given a gateway and a worker; on the scaled set-up, a second gateway that starts after the
    # worker registered, which the worker learns of from its heartbeats
    stack.start_gateway()
    stack.start_worker(stack.node_token, "--job-network", "bridge")
    gateways = [stack.gateway_port]
    if stack.scaled:
        _registered(stack, "rig")
        gateways.append(stack.start_gateway("second"))
    doc = hello_world(test_image, cmd=HTTPD)
    doc["ops"][0]["args"]["expose"] = 8000
    job_id = stack.api.post("/jobs", doc).json()["id"]
    first = _endpoint(stack.api, job_id, ready=True)
    for port in gateways:
        answer = _answers(stack, first["url"], 200, port=port)
        assert (answer.status_code, answer.text) == (200, "hello\n"), (port, answer.text, stack.logs())

    # When the worker is killed -9 under the running service
    stack.kill("worker")

    # Then its URL no longer reaches the old container, which still runs: each gateway answers 503
    # with a sentence while the attempt is held
    for port in gateways:
        down = _answers(stack, first["url"], 503, port=port)
        assert down.status_code == 503 and "tunnel is down" in down.text, (port, down.status_code, down.text)
    assert len(stack.job_containers(job_id, running=True)) == 1

    # When the worker comes back (the same node restarted)
    stack.start_worker(stack.node_token, "--job-network", "bridge")

    # Then the op runs again, at the URL it had: an op's port keeps its endpoint across attempts
    second = _endpoint(stack.api, job_id, ready=True)
    assert second["url"] == first["url"]
    for port in gateways:
        answer = _answers(stack, second["url"], 200, port=port)
        assert (answer.status_code, answer.text) == (200, "hello\n"), (port, answer.text, stack.logs())
    attempts = stack.api.get(f"/jobs/{job_id}")["ops"][0]["attempts"]
    assert [a["state"] for a in attempts] == ["lost", "running"], attempts
    # And the killed worker's container was removed when the node came back
    assert len(stack.job_containers(job_id, running=True)) == 1

    assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert stack.api.wait(job_id)["state"] == "cancelled"
