"""Workflows on real containers: outputs flowing between ops, literals, retries, timeouts,
parallel ops on two workers, volumes, stop_if_dependent_stops, and restarts that lose nothing."""

from __future__ import annotations

import io
import signal
import tarfile
import time
import uuid
from datetime import datetime

import pytest
import requests

from scheduler.nodes import cluster_id
from tests import factories
from tests.stack import Api, Stack


def run_op(key: str, image: str, cmd, *, group: str = "main", depends_on=(), **args) -> dict:
    op = {"type": "container/run", "id": key, "args": {"image": image, "cmd": cmd, **args},
          "execution": {"group": group}}
    if depends_on:
        op["execution"]["depends_on"] = list(depends_on)
    return op


def job(*ops, **top) -> dict:
    return {"version": "0.1", "type": "container", "ops": list(ops), **top}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sqlite_template, docker_client):
    root = tmp_path_factory.mktemp("workflows")
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    with Stack(root, database_url=f"sqlite:///{db}", broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}",
                  extra_env={"PEERGRID_TIMEOUT_GRACE": "12"}) as stack:
        stack.start_web()
        stack.start_scheduler()
        stack.node_tokens = {}
        for name in ("alpha", "beta"):
            _, token, _ = factories.node(stack.core, name=name)
            stack.node_tokens[name] = token
            stack.start_worker(token, name=name)
        _, api_token = factories.user(stack.core)
        stack.api = Api(stack.url, api_token)
        yield stack


def submit(stack, definition) -> int:
    response = stack.api.post("/jobs", definition)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def op_of(job_body: dict, key: str) -> dict:
    return next(op for op in job_body["ops"] if op["id"] == key)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_outputs_flow_to_dependents_and_results_feed_literals(stack, test_image):
    """Given make → transform → use, when it runs, then files and results flow down the chain."""
    image = test_image
    definition = job(
        run_op("make", image, "echo hello peergrid world > /output/words.txt", output="/output"),
        {**run_op("transform", image,
                  "tr a-z A-Z < /inputs/make/words.txt > /output/upper.txt; echo WORDS=$(wc -w < /inputs/make/words.txt)",
                  depends_on=["make"], output="/output"),
         "results": {"words": "(?<=WORDS=)\\d+"}},
        run_op("use", image, "echo got %%ops.transform.results.words%% words; cat /inputs/transform/upper.txt",
               depends_on=["transform"]),
    )
    job_id = submit(stack, definition)
    body = stack.api.wait(job_id, timeout=90)

    assert body["state"] == "succeeded", stack.logs()
    assert op_of(body, "transform")["results"] == {"words": ["3"]}
    use_lines = [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs", op="use")["lines"]]
    assert "got 3 words" in use_lines and "HELLO PEERGRID WORLD" in use_lines

    listing = stack.api.get(f"/jobs/{job_id}/artifacts")["artifacts"]
    assert sorted(a["op"] for a in listing) == ["make", "transform"]
    download = stack.api.http.get(stack.url + f"/api/v1/jobs/{job_id}/artifacts/transform", timeout=10)
    assert download.status_code == 200
    import hashlib

    transform = next(a for a in listing if a["op"] == "transform")
    assert hashlib.sha256(download.content).hexdigest() == transform["sha256"]
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        assert tar.extractfile("output/upper.txt").read() == b"HELLO PEERGRID WORLD\n"
    kinds = [e["kind"] for e in body["events"]]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded" and "artifact" in kinds and "resolved" in kinds


def test_independent_ops_run_at_the_same_time_on_two_workers(stack, test_image):
    definition = job(run_op("left", test_image, "sleep 3"), run_op("right", test_image, "sleep 3"))
    body = stack.api.wait(submit(stack, definition), timeout=60)

    assert body["state"] == "succeeded"
    left, right = (op_of(body, k)["attempts"][-1] for k in ("left", "right"))
    assert {left["node"]["name"], right["node"]["name"]} == {"alpha", "beta"}
    overlap = min(when(left["finished_at"]), when(right["finished_at"])) - max(
        when(left["started_at"]), when(right["started_at"]))
    assert overlap.total_seconds() > 1, (left, right)


def test_groups_run_in_order_a_failure_skips_only_its_dependents_and_a_retry_succeeds(stack, test_image):
    """The same rules as tests/test_workflow_rules.py, once on real containers and workers."""
    definition = job(
        run_op("first", test_image, "exit 1", group="pre"),
        run_op("independent", test_image, "echo still runs", group="main"),
        run_op("dependent", test_image, "echo never", group="main", depends_on=["first"]),
        run_op("flaky", test_image, '[ "$PEERGRID_ATTEMPT" -ge 2 ] || { echo first try fails; exit 1; }; echo ok',
               group="main", restart_policy={"policy": "on-failure", "restart_tries": 2}),
    )
    job_id = submit(stack, definition)
    body = stack.api.wait(job_id, timeout=60)

    assert body["state"] == "failed"
    assert op_of(body, "first")["state"] == "failed"
    assert op_of(body, "independent")["state"] == "succeeded"  # groups go on after a failure, as in Nosana
    assert op_of(body, "dependent")["state"] == "skipped"
    assert "'first'" in op_of(body, "dependent")["error"]
    assert when(op_of(body, "independent")["started_at"]) >= when(op_of(body, "first")["finished_at"])
    flaky = op_of(body, "flaky")
    assert [a["state"] for a in flaky["attempts"]] == ["failed", "succeeded"], stack.logs()
    assert "retrying" in [e["kind"] for e in body["events"]]


def test_a_timeout_stops_the_op_and_says_so(stack, test_image):
    definition = job(run_op("slow", test_image, "echo begin; sleep 60", timeout=2))
    began = time.monotonic()
    body = stack.api.wait(submit(stack, definition), timeout=60)

    assert time.monotonic() - began < 30
    slow = op_of(body, "slow")
    assert body["state"] == "failed" and "timed out after 2 seconds" in slow["error"]


def test_extending_a_running_job_lets_it_finish(stack, test_image):
    job_id = submit(stack, job(run_op("long", test_image, "sleep 4; echo made it", timeout=2)))
    extended = stack.api.post(f"/jobs/{job_id}/extend", {"seconds": 30})
    assert extended.status_code == 200, extended.text
    body = stack.api.wait(job_id, timeout=60)

    assert body["state"] == "succeeded", body
    assert op_of(body, "long")["timeout"] == 32
    assert any(e["kind"] == "extended" for e in body["events"])


def test_ops_sharing_a_volume_run_on_the_node_that_made_it_which_removes_it_once_the_job_ends(
    stack, test_image, docker_client
):
    """Given a volume made by one op, written by a second and read slowly by a third, when the job
    runs, then all three run on one node, which keeps the volume while the job runs and removes it
    within a few heartbeats of the job's end."""
    name = f"scratch-{uuid.uuid4().hex[:8]}"  # a fresh name: a volume left by another run is not this one
    mount = [{"name": name, "dest": "/data"}]
    definition = job(
        {"type": "container/create-volume", "id": "vol", "args": {"name": name}, "execution": {"group": "a"}},
        run_op("write", test_image, "echo kept > /data/note.txt", group="b", volumes=mount),
        run_op("read", test_image, "sleep 5; cat /data/note.txt", group="c", volumes=mount),
    )
    job_id = submit(stack, definition)
    with stack.core.transaction() as session:
        volume = {"name": f"peergrid-{cluster_id(session)}-{job_id}-{name}"}
    stack.api.wait(job_id, timeout=60, until=("running",))
    deadline = time.monotonic() + 30
    while op_of(stack.api.get(f"/jobs/{job_id}"), "read")["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4)  # two heartbeats while the job runs
    assert [v.name for v in docker_client.volumes.list(filters=volume)] == [volume["name"]]

    body = stack.api.wait(job_id, timeout=60)
    deadline = time.monotonic() + 12  # a few heartbeats, 2 s apart
    while docker_client.volumes.list(filters=volume) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert body["state"] == "succeeded", stack.logs()
    nodes = {op_of(body, k)["node"]["name"] for k in ("vol", "write", "read")}
    assert len(nodes) == 1
    assert [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs", op="read")["lines"]] == ["kept"]
    assert docker_client.volumes.list(filters=volume) == [], stack.logs()


def test_an_op_that_serves_another_is_stopped_when_that_one_ends(stack, test_image):
    """stop_if_dependent_stops: the flagged op starts once what it depends on has started, and
    stops when that ends."""
    definition = job(
        run_op("task", test_image, "sleep 3; echo task done"),
        {**run_op("sidecar", test_image, "echo sidecar up; sleep 120", depends_on=["task"]),
         "execution": {"group": "main", "depends_on": ["task"], "stop_if_dependent_stops": True}},
    )
    began = time.monotonic()
    body = stack.api.wait(submit(stack, definition), timeout=60)

    assert time.monotonic() - began < 40
    assert body["state"] == "succeeded", body
    assert op_of(body, "task")["state"] == "succeeded"
    sidecar = op_of(body, "sidecar")
    assert sidecar["state"] == "stopped" and "'task'" in sidecar["error"]
    assert when(sidecar["started_at"]) < when(op_of(body, "task")["finished_at"])


def test_an_empty_result_resolves_to_nothing(stack, test_image):
    definition = job(
        {**run_op("setter", test_image, "echo nothing", group="pre"), "results": {"port": "(?<=port: ).*"}},
        run_op("user", test_image, ["echo", "%%ops.setter.results.port%%"], group="main"),
    )
    body = stack.api.wait(submit(stack, definition), timeout=60)
    assert op_of(body, "setter")["results"] == {"port": []}
    assert op_of(body, "user")["state"] == "succeeded"  # an empty result is not an error
    assert body["state"] == "succeeded"


def test_restarting_web_and_scheduler_mid_workflow_loses_nothing(stack, test_image):
    definition = job(
        run_op("one", test_image, "sleep 3; echo one"),
        run_op("two", test_image, "echo two", depends_on=["one"]),
    )
    job_id = submit(stack, definition)
    deadline = time.monotonic() + 30
    while stack.api.get(f"/jobs/{job_id}")["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)

    stack.restart("web", lambda: stack.start_web())
    stack.restart("scheduler", stack.start_scheduler)
    body = stack.api.wait(job_id, timeout=90)

    assert body["state"] == "succeeded", stack.logs()
    assert [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]] == ["one", "two"]


def test_the_scheduler_times_out_an_op_whose_worker_vanished(tmp_path, sqlite_url, test_image):
    """Given an op with a 3 s limit and one retry, when its worker is killed -9 mid-run, then the
    scheduler fails that attempt after the limit and the retry runs on the other worker."""
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
               extra_env={"PEERGRID_TIMEOUT_GRACE": "2"}) as stack:
        stack.start_web()
        stack.start_scheduler()
        _, doomed, _ = factories.node(stack.core, name="doomed")
        stack.start_worker(doomed, name="doomed")
        _, user_token = factories.user(stack.core)
        api = Api(stack.url, user_token)
        job_id = api.post("/jobs", job(run_op("op", test_image, "sleep 2; echo finished", timeout=3, retries=1))).json()["id"]
        deadline = time.monotonic() + 30
        while api.get(f"/jobs/{job_id}")["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        stack.kill("doomed")
        _, survivor, _ = factories.node(stack.core, name="survivor")
        stack.start_worker(survivor, name="survivor")

        body = api.wait(job_id, timeout=90)

        attempts = op_of(body, "op")["attempts"]
        assert body["state"] == "succeeded", stack.logs()
        assert [(a["state"], a["node"]["name"]) for a in attempts] == [("failed", "doomed"), ("succeeded", "survivor")]
        assert "did not report" in attempts[0]["error"]
        assert any(e["kind"] == "timed_out" for e in body["events"])
