"""Flower pointed at the broker lists the scheduler's Celery worker and every node's agent.

Scaled set-up only (PostgreSQL and Redis): kombu's SQL broker carries no events between processes.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
import requests

from tests import factories
from tests.conftest import need
from tests.stack import Stack, free_port
from worker.events import SW_IDENT, NodeEvents, event_hostname


@pytest.fixture
def flower(tmp_path, redis_url):
    """Run Flower on a free loopback port against the test broker; yield its URL."""
    need(importlib.util.find_spec("flower") is not None, "Flower (the test extra installs it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "flower.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "--broker", redis_url, "flower", "--address=127.0.0.1", f"--port={port}"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/healthcheck", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "Flower did not come up:\n" + log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def workers(flower_url: str) -> dict[str, dict]:
    """The workers Flower's dashboard lists, by hostname, with the events counted for each."""
    page = requests.get(flower_url + "/workers", params={"json": 1}, timeout=5)
    page.raise_for_status()
    return {each["hostname"]: each for each in page.json()["data"]}


def wait_for(what: str, test, *, timeout: float = 30, stack: Stack | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = test()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what} after {timeout}s" + (f"\n{stack.logs()}" if stack else ""))


def test_flower_lists_the_scheduler_and_the_node_and_sees_the_node_leave(
    tmp_path, postgres_url, redis_url, test_image, flower
):
    # Given the scaled set-up with the scheduler, one node's worker, and Flower on the same broker
    with Stack(tmp_path, database_url=postgres_url, broker_url=redis_url) as stack:
        api = stack.start_with_node("flower-node")
        node = event_hostname("flower-node")

        # Then Flower lists both, alive: the scheduler as Celery, the node as peergrid's worker
        listed = wait_for(
            "Flower does not list the scheduler and the node",
            lambda: (found := workers(flower))
            and node in found
            and any(each["sw_ident"] == "py-celery" for each in found.values())
            and found,
            stack=stack,
        )
        entry = listed[node]
        assert entry["status"] is True and entry["sw_ident"] == SW_IDENT and entry["sw_ver"]
        assert entry["freq"] == 2 and entry["active"] == 0 and entry["processed"] == 0
        scheduler = next(each for each in listed.values() if each["sw_ident"] == "py-celery")
        assert scheduler["status"] is True

        # When the node runs a job, its next heartbeat counts it as processed
        created = api.post("/jobs", factories.hello_world(test_image))
        assert created.status_code == 201, created.text
        assert api.wait(created.json()["id"])["state"] == "succeeded", stack.logs()
        wait_for("Flower does not count the node's finished attempt",
                 lambda: workers(flower)[node]["processed"] == 1, timeout=10, stack=stack)

        # When the worker is stopped as an operator would, it says so: Flower shows it offline at once
        for name, process, _ in stack.processes:
            if name == "worker":
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        gone = wait_for("Flower still shows the stopped node online",
                        lambda: (entry := workers(flower)[node])["status"] is False and entry, timeout=10)
        assert gone.get("worker-offline") == 1
        assert workers(flower)[scheduler["hostname"]]["status"] is True


@pytest.fixture
def publish_refused(redis_url):
    """A broker URL for a Redis user that may do anything but publish, as consume-only credentials are."""
    admin = redis.Redis.from_url(redis_url)
    user, password = f"peergrid-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                      commands=["+@all", "-publish"])
    try:
        host = redis_url.split("://", 1)[1]
        yield f"redis://{user}:{password}@{host}"
    finally:
        admin.acl_deluser(user)


def test_a_broker_that_refuses_events_is_logged_once_and_never_raises(publish_refused, caplog):
    events = NodeEvents(publish_refused, event_hostname("refused"), freq=0.1,
                        load=lambda: {"active": 0, "processed": 0})
    with caplog.at_level(logging.INFO, logger="worker.events"):
        sent = [events.send(kind) for kind in ("worker-online", "worker-heartbeat", "worker-heartbeat")]
    assert sent == [False, False, False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--no-events" in warnings[0].getMessage()


def test_events_go_out_again_once_the_broker_takes_them(redis_url, caplog):
    events = NodeEvents("redis://127.0.0.1:1/0", event_hostname("late"), freq=0.1,
                        load=lambda: {"active": 0, "processed": 0})
    with caplog.at_level(logging.INFO, logger="worker.events"):
        assert events.send("worker-online") is False
        events.broker_url = redis_url
        assert events.send("worker-heartbeat") is True
    assert [r.getMessage() for r in caplog.records][-1] == "sending worker events again"


def test_events_can_be_turned_off():
    from worker.settings import WorkerSettings

    assert WorkerSettings.from_env({}, server="http://x", token="t").events is True
    assert WorkerSettings.from_env({"PEERGRID_WORKER_EVENTS": "false"}, server="http://x", token="t").events is False
    assert WorkerSettings.from_env({}, server="http://x", token="t", events=False).events is False
