"""Stopping a worker: a first Ctrl-C drains it, a second (or SIGTERM, or the drain limit) gives what
runs back, unbilled and offered again at once; never a failed, billed op for its owner."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.stack import Stack, embedded_stack

# The first attempt waits long; the next one (elsewhere, or here after a restart) ends at once.
FIRST_TRY_WAITS = 'echo "attempt $PEERGRID_ATTEMPT"; [ "$PEERGRID_ATTEMPT" = 1 ] && sleep 120; echo done'


def one_op(image: str, cmd: str) -> dict:
    # No retries: an op given back must get another attempt all the same.
    return {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": "op", "args": {"image": image, "cmd": cmd}}]}


@pytest.fixture
def stack(tmp_path, sqlite_url, test_image):
    with embedded_stack(tmp_path, sqlite_url, PEERGRID_HEARTBEAT_INTERVAL="1") as stack:
        yield stack


def running(stack: Stack, job_id: int, first_line: str) -> None:
    """Wait until the op runs and its first line has reached the server."""
    deadline = time.monotonic() + 30
    while first_line not in [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]]:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


def exits(stack: Stack, timeout: float) -> int:
    try:
        return stack.process("worker").wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker still runs after {timeout} s:\n{stack.logs()}") from None


def test_a_first_ctrl_c_lets_the_running_op_finish_and_takes_nothing_new(stack, test_image):
    """Given a worker running an op, when it gets one SIGINT, then the op runs to its end and
    succeeds, an op submitted meanwhile is not taken, and the worker then exits by itself."""
    stack.start_worker(stack.node_token)
    job_id = stack.api.post("/jobs", one_op(test_image, "echo begin; sleep 4; echo done")).json()["id"]
    running(stack, job_id, "begin")

    stack.signal("worker", signal.SIGINT)
    later = stack.api.post("/jobs", one_op(test_image, "echo later")).json()["id"]
    body = stack.api.wait(job_id, timeout=30)

    assert body["state"] == "succeeded", stack.logs()
    assert [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"]] == ["begin", "done"]
    assert exits(stack, 15) == 0
    waiting = stack.api.get(f"/jobs/{later}")
    assert waiting["state"] == "queued" and waiting["ops"][0]["attempts"][0]["node"] is None


@pytest.mark.parametrize("how", ["second Ctrl-C", "SIGTERM", "drain limit"])
def test_a_worker_that_stops_before_its_op_ends_gives_it_back_unbilled(stack, test_image, how):
    """Given a worker running an op that allows no retry, when a second SIGINT, a SIGTERM or the
    drain limit stops it, then its container stops, its attempt is released (not billed, not a
    try) and offered again at once, and the next worker to come runs the op to success."""
    stack.start_worker(stack.node_token, *(["--drain-timeout", "2"] if how == "drain limit" else []))
    job_id = stack.api.post("/jobs", one_op(test_image, FIRST_TRY_WAITS)).json()["id"]
    running(stack, job_id, "attempt 1")

    began = time.monotonic()
    if how == "SIGTERM":
        stack.signal("worker", signal.SIGTERM)
    else:
        stack.signal("worker", signal.SIGINT)
        if how == "second Ctrl-C":
            time.sleep(0.5)
            stack.signal("worker", signal.SIGINT)
    assert exits(stack, 30) == 0
    stopped_in = time.monotonic() - began

    given_back = stack.api.get(f"/jobs/{job_id}")
    first, *rest = given_back["ops"][0]["attempts"]
    assert (first["state"], first["cost"]) == ("released", 0), stack.logs()
    assert "given back" in first["error"] and "Not billed" in first["cost_note"]
    assert [a["state"] for a in rest] == ["queued"]  # offered again at once, though the op allows no retry
    if how == "drain limit":
        assert stopped_in > 2
    assert not stack.job_containers(job_id)

    stack.start_worker(stack.node_token)
    body = stack.api.wait(job_id, timeout=30)
    assert body["state"] == "succeeded", stack.logs()
    assert [a["state"] for a in body["ops"][0]["attempts"]] == ["released", "succeeded"]
    lines = stack.api.get(f"/jobs/{job_id}/logs")["lines"]
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == ["attempt 1", "attempt 2", "done"]
