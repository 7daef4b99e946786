"""The whole path on real parts: submit → broker → worker → container → logs.

Run twice: embedded (SQLite and the SQL broker) and scaled (PostgreSQL and Redis).
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests import factories
from tests.factories import hello_world
from tests.registry import LoopbackServer, RegistryHandler
from tests.stack import Api, Stack

HELLO = Path(__file__).resolve().parents[2] / "shared" / "compat" / "nosana" / "hello-world.json"
if not HELLO.exists():
    HELLO = Path(__file__).resolve().parents[1] / "shared" / "compat" / "nosana" / "hello-world.json"


@pytest.fixture(params=["embedded", "scaled"])
def stack(request, tmp_path, test_image):
    if request.param == "embedded":
        database_url = request.getfixturevalue("sqlite_url")
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
        broker_url = request.getfixturevalue("redis_url")
    with Stack(tmp_path, database_url=database_url, broker_url=broker_url) as stack:
        stack.kind = request.param
        stack.api = stack.start_with_node("e2e-node")
        yield stack


def nosana_hello(image: str) -> dict:
    doc = json.loads(HELLO.read_text())
    doc["ops"][0]["args"]["image"] = image
    return doc


def test_hello_world_succeeds_and_its_output_is_in_the_logs(stack, test_image):
    api = stack.api
    timings = []
    for _ in range(3):
        began = time.monotonic()
        created = api.post("/jobs", nosana_hello(test_image))
        assert created.status_code == 201, created.text
        job = api.wait(created.json()["id"])
        timings.append(time.monotonic() - began)
        assert job["state"] == "succeeded", stack.logs()
        op = job["ops"][0]
        assert op["exit_code"] == 0 and op["node"]["name"] == "e2e-node"
        lines = api.get(f"/jobs/{job['id']}/logs")["lines"]
        assert [line["text"] for line in lines] == ["hello world"]

    bare = []
    for _ in range(3):
        began = time.monotonic()
        subprocess.run(["docker", "run", "--rm", "--network", "none", test_image, "echo", "hello", "world"],
                       check=True, capture_output=True)
        bare.append(time.monotonic() - began)
    print(
        f"\n[{stack.kind}] submit→succeeded median {statistics.median(timings):.3f}s "
        f"(runs {', '.join(f'{t:.3f}' for t in timings)}); bare docker run --rm median {statistics.median(bare):.3f}s"
    )


def test_slow_output_arrives_in_order_before_the_job_ends(stack, test_image):
    api = stack.api
    cmd = "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.5; done; echo done >&2"
    created = api.post("/jobs", hello_world(test_image, cmd=cmd))
    job_id = created.json()["id"]

    seen_while_running: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = api.get(f"/jobs/{job_id}/logs")
        if page["state"] == "running" and page["lines"]:
            seen_while_running = [line["text"] for line in page["lines"]]
            if len(seen_while_running) >= 2:
                break
        if page["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    job = api.wait(job_id)

    assert job["state"] == "succeeded", stack.logs()
    assert len(seen_while_running) >= 2, "log lines should be visible while the job runs"
    assert seen_while_running == [f"line-{i}" for i in range(1, len(seen_while_running) + 1)]
    final = api.get(f"/jobs/{job_id}/logs")["lines"]
    assert [line["text"] for line in final] == [f"line-{i}" for i in range(1, 9)] + ["done"]
    assert final[-1]["stream"] == "stderr"


def test_failures_say_why(stack, test_image):
    api = stack.api
    failing = api.wait(api.post("/jobs", hello_world(test_image, cmd="echo bye; exit 7")).json()["id"])
    missing = api.wait(api.post("/jobs", hello_world("peergrid-test/not-here:never")).json()["id"])

    assert failing["state"] == "failed"
    assert failing["ops"][0]["exit_code"] == 7
    assert failing["ops"][0]["error"] == "The container exited with code 7."
    assert missing["state"] == "failed"
    assert missing["ops"][0]["exit_code"] is None
    assert "could not be pulled" in missing["ops"][0]["error"]
    lines = api.get(f"/jobs/{missing['id']}/logs")["lines"]
    assert lines[-1]["stream"] == "system" and "could not be pulled" in lines[-1]["text"]


def test_cancel_stops_a_running_container(stack, test_image):
    api = stack.api
    job_id = api.post("/jobs", hello_world(test_image, cmd="echo started; sleep 60")).json()["id"]
    deadline = time.monotonic() + 30
    while api.get(f"/jobs/{job_id}/logs")["lines"] == [] and time.monotonic() < deadline:
        time.sleep(0.1)

    began = time.monotonic()
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    # The worker learns on its next log batch or heartbeat and stops the container.
    while time.monotonic() - began < 30:
        running = stack.job_containers(job_id, running=True)
        if not running:
            break
        time.sleep(0.2)
    assert not running, "the container should be stopped after cancel"
    assert api.get(f"/jobs/{job_id}")["state"] == "cancelled"


def test_an_op_that_floods_its_log_is_cut_off_and_keeps_running(tmp_path, sqlite_url, test_image):
    """Given a 64 KB log limit, when an op prints megabytes and then writes its output, then its
    stored log ends with one line saying so and holds no more than the limit and that line, and
    the op runs to its end and succeeds."""
    limit = 64 * 1024
    broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    with Stack(tmp_path, database_url=sqlite_url, broker_url=broker_url,
               extra_env={"PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT": str(limit)}) as stack:
        api = stack.start_with_node("flood-node")
        flood = hello_world(test_image, cmd="yes 0123456789abcdef0123456789abcdef | head -n 200000; echo survived > /out/end")
        flood["ops"][0]["args"]["output"] = "/out"

        job = api.wait(api.post("/jobs", flood).json()["id"])

        assert job["state"] == "succeeded", stack.logs()
        lines = api.get(f"/jobs/{job['id']}/logs")["lines"]
        last = lines[-1]
        assert last["stream"] == "system"
        assert last["text"] == (
            "[peergrid] The log of this attempt passed the 64 KB limit; later lines were discarded. The op keeps running."
        )
        assert {line["text"] for line in lines[:-1]} == {"0123456789abcdef0123456789abcdef"}
        assert sum(len(line["text"].encode()) for line in lines) <= limit + len(last["text"].encode())
        archive = api.http.get(stack.url + f"/api/v1/jobs/{job['id']}/artifacts/hello-world", timeout=10)
        with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
            assert b"survived" in next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("end"))
        assert "reached the server's limit; discarding its further output" in stack.logs()


class LoginRegistry(LoopbackServer):
    """A registry on loopback that asks for a Basic login and keeps what it was sent; it holds no image."""

    def __init__(self):
        seen = self.authorizations = []

        class Handler(RegistryHandler):
            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                if not self.headers.get("Authorization"):
                    self.answer(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": 'Basic realm="test"'})
                elif self.path == "/v2/":
                    self.answer(200, {})
                else:
                    self.answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

            do_HEAD = do_GET

        super().__init__(Handler)


def test_a_secret_reaches_the_container_and_the_registry_and_nowhere_else(stack, test_image):
    """Given secrets TOKEN and REGISTRY, when one job echoes $TOKEN and another pulls its image
    from a private registry with REGISTRY as the password, then the container and the registry get
    the values, and no log, page, event, broker message or process log holds them."""
    import base64
    import hashlib
    import re
    import sqlite3
    import uuid

    import requests

    from tests.conftest import need
    from tests.factories import PASSWORD

    token_value, registry_value = f"tok-{uuid.uuid4().hex}", f"reg-{uuid.uuid4().hex}"
    _, api_token = factories.user(stack.core, email="keeper@example.com")
    api = Api(stack.url, api_token)
    for name, value in (("TOKEN", token_value), ("REGISTRY", registry_value)):
        assert api.http.put(f"{api.url}/secrets/{name}", json={"value": value}, timeout=10).status_code == 201
    echo = hello_world(test_image, cmd='echo $TOKEN; printf %s "$TOKEN" | sha256sum')
    echo["ops"][0]["args"]["env"] = {"TOKEN": "%%secrets.TOKEN%%"}
    registry = LoginRegistry()
    try:
        private = hello_world(f"{registry.address}/private/app:1")
        private["ops"][0]["args"]["authentication"] = {
            "docker": {"username": "keeper", "password": "%%secrets.REGISTRY%%", "server": registry.address}}

        echoed = api.wait(api.post("/jobs", echo).json()["id"])
        pulled = api.wait(api.post("/jobs", private).json()["id"])
    finally:
        registry.close()

    assert echoed["state"] == "succeeded", stack.logs()
    lines = [line["text"] for line in api.get(f"/jobs/{echoed['id']}/logs")["lines"]]
    assert lines == ["***", f"{hashlib.sha256(token_value.encode()).hexdigest()}  -"]
    need(bool(registry.authorizations), "A Docker engine that reaches the test's loopback registry")
    assert f"Basic {base64.b64encode(f'keeper:{registry_value}'.encode()).decode()}" in registry.authorizations
    assert pulled["state"] == "failed" and "could not be pulled" in pulled["ops"][0]["error"]

    browser = requests.Session()
    form = browser.get(f"{stack.url}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    browser.post(f"{stack.url}/login", data={"email": "keeper@example.com", "password": PASSWORD, "csrf_token": csrf},
                 timeout=10)
    seen = {
        "job answers": json.dumps([api.get(f"/jobs/{j['id']}") for j in (echoed, pulled)]),
        "logs": json.dumps([api.get(f"/jobs/{j['id']}/logs") for j in (echoed, pulled)]),
        "job pages": "".join(browser.get(f"{stack.url}/jobs/{j['id']}", timeout=10).text for j in (echoed, pulled)),
        "account page": browser.get(f"{stack.url}/account", timeout=10).text,
        "process logs": "".join(log.read_text() for _, _, log in stack.processes),
    }
    assert "secrets.TOKEN" not in seen["job pages"] and f"#{echoed['id']}" in seen["job pages"]
    if stack.kind == "embedded":  # the SQL broker keeps delivered messages, so they can be read back
        with sqlite3.connect(stack.root / "broker.sqlite") as broker:
            messages = [row[0] for row in broker.execute("SELECT payload FROM kombu_message")]
        assert len(messages) >= 2
        seen["broker messages"] = json.dumps(messages, default=str)
    for where, text in seen.items():
        assert token_value not in text and registry_value not in text, f"a secret's value is in the {where}"
