"""What a worker could not report while the web was down reaches the server when it returns,
across a worker killed -9 and started again meanwhile."""

from __future__ import annotations

import time

import pytest

from tests.stack import Stack, embedded_stack

# Longer than the worker keeps retrying one report (about 40 s), shorter than the node timeout.
OUTAGE_S = 45


def one_op(image: str, cmd: str, **args) -> dict:
    return {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": "op", "args": {"image": image, "cmd": cmd, **args}}]}


@pytest.fixture
def stack(tmp_path, sqlite_url, test_image):
    # A long node timeout: this is about the reports, not the reaper.
    with embedded_stack(tmp_path, sqlite_url, worker=True, PEERGRID_HEARTBEAT_INTERVAL="1",
                        PEERGRID_NODE_TIMEOUT="300") as stack:
        yield stack


def started(stack: Stack, job_id: int) -> None:
    """Wait until the op runs and its first line has reached the server."""
    deadline = time.monotonic() + 30
    while [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]] != ["begin"]:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


def container_gone(stack: Stack, job_id: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while stack.job_containers(job_id):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)


def test_an_op_that_ends_while_the_web_is_down_succeeds_with_its_logs_once_it_returns(stack, test_image):
    """Given an op running, when the web goes down, the op prints more, writes its output and ends,
    and the web stays down longer than the worker retries a report, then once the web is back the
    op has succeeded on its first attempt with every line it printed and its output folder."""
    cmd = "echo begin; sleep 2; for i in 1 2 3; do echo line-$i; done; echo kept > /output/result.txt"
    job_id = stack.api.post("/jobs", one_op(test_image, cmd, output="/output")).json()["id"]
    started(stack, job_id)

    stack.terminate("web")
    container_gone(stack, job_id)
    time.sleep(OUTAGE_S)
    stack.start_web()
    body = stack.api.wait(job_id, timeout=30)

    attempts = body["ops"][0]["attempts"]
    assert body["state"] == "succeeded", stack.logs()
    assert [a["state"] for a in attempts] == ["succeeded"]
    assert [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]] == [
        "begin", "line-1", "line-2", "line-3"]
    assert [a["op"] for a in stack.api.get(f"/jobs/{job_id}/artifacts")["artifacts"]] == ["op"]


def test_an_outcome_kept_by_a_worker_killed_while_the_web_was_down_reaches_the_server(stack, test_image):
    """Given an op that ended while the web was down, when its worker is killed -9 and started again
    while the web is still down, then once the web is back the op has succeeded on its first
    attempt, with its logs, rather than been lost by the worker registering anew."""
    job_id = stack.api.post("/jobs", one_op(test_image, "echo begin; sleep 2; echo end")).json()["id"]
    started(stack, job_id)

    stack.terminate("web")
    container_gone(stack, job_id)
    time.sleep(0.5)  # the worker keeps the outcome as soon as the container is gone, before it tries the server
    stack.kill("worker")
    stack.start_worker(stack.node_token)
    time.sleep(3)
    stack.start_web()
    body = stack.api.wait(job_id, timeout=30)

    attempts = body["ops"][0]["attempts"]
    assert body["state"] == "succeeded", stack.logs()
    assert [a["state"] for a in attempts] == ["succeeded"], stack.logs()
    assert [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]] == ["begin", "end"]
