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
        stack.start_web()
        stack.start_scheduler()
        _, node_token, _ = factories.node(stack.core, name="e2e-node")
        stack.start_worker(node_token)
        _, token = factories.user(stack.core)
        stack.api = Api(stack.url, token)
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
        running = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=peergrid.job={job_id}"], capture_output=True, text=True
        ).stdout.strip()
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
        stack.start_web()
        stack.start_scheduler()
        _, node_token, _ = factories.node(stack.core, name="flood-node")
        stack.start_worker(node_token)
        _, token = factories.user(stack.core)
        api = Api(stack.url, token)
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
