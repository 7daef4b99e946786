"""`peergrid health`, and the loops each long-lived process beats into its health file: the scheduler's
upkeep and consumer, the web's hearing, the worker's heartbeat and offers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from cli import main as peergrid
from protocol.liveness import Liveness, examine
from tests.outages import wait_until
from tests.stack import Stack

ROOT = Path(__file__).resolve().parents[1]


def beaten(path: Path, **loops: tuple[float, str | None]) -> Path:
    """A health file whose loops went round at the given ages ago, with these details, every second."""
    now = time.time()
    body = {"pid": 1, "written_at": now,
            "loops": {name: {"at": now - age, "every_s": 1.0, "detail": detail} for name, (age, detail) in loops.items()}}
    path.write_text(json.dumps(body))
    return path


@pytest.fixture
def http_url():
    """A tiny server on loopback: /ok answers 200, /teapot 418, /slow after 2 s."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                time.sleep(2)
            self.send_response({"/ok": 200, "/teapot": 418}.get(self.path, 200))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


# -- the command -----------------------------------------------------------------------------


def test_healthy_is_exit_0_and_one_line_of_every_loop(tmp_path):
    path = beaten(tmp_path / "health.json", upkeep=(0.4, "leading"), consumer=(1.1, None))

    done = CliRunner().invoke(peergrid, ["health", str(path)])

    assert done.exit_code == 0
    assert done.output == "healthy: upkeep 0.4 s ago (leading), consumer 1.1 s ago\n"


def test_unhealthy_is_exit_1_and_a_line_per_problem(tmp_path):
    path = beaten(tmp_path / "health.json", upkeep=(43, "leading"), consumer=(0.2, None), offers=(12, None))

    done = CliRunner().invoke(peergrid, ["health", str(path)])

    assert done.exit_code == 1
    assert done.output.splitlines() == [
        "unhealthy: upkeep last went round 43 s ago, leading (it goes round every 1 s)",
        "unhealthy: offers last went round 12 s ago (it goes round every 1 s)",
    ]
    lenient = CliRunner().invoke(peergrid, ["health", str(path), "--grace", "20"])  # 12 s late is within 1 + 20
    assert lenient.exit_code == 1 and lenient.output.splitlines() == done.output.splitlines()[:1]


def test_a_missing_file_is_unhealthy(tmp_path):
    done = CliRunner().invoke(peergrid, ["health", str(tmp_path / "nowhere.json")])

    assert done.exit_code == 1
    assert done.output.startswith(f"unhealthy: there is no health file at {tmp_path / 'nowhere.json'}")


def test_the_file_defaults_to_the_processes_own_and_wait_checks_until_healthy(tmp_path):
    path = tmp_path / "health.json"
    env = {"PEERGRID_HEALTH_FILE": str(path)}

    at_once = CliRunner().invoke(peergrid, ["health"], env=env)
    threading.Timer(1.5, beaten, args=(path,), kwargs={"upkeep": (0.1, "standing by")}).start()
    began = time.monotonic()
    waited = CliRunner().invoke(peergrid, ["health", "--wait", "20"], env=env)

    assert at_once.exit_code == 1 and f"there is no health file at {path}" in at_once.output
    assert waited.exit_code == 0 and waited.output.startswith("healthy: upkeep") and "(standing by)" in waited.output
    assert 1.5 <= time.monotonic() - began < 10
    path.unlink()
    gave_up = CliRunner().invoke(peergrid, ["health", "--wait", "1"], env=env)
    assert gave_up.exit_code == 1


def test_the_url_must_answer_2xx_as_well(tmp_path, http_url):
    path = beaten(tmp_path / "health.json", hearing=(0.5, None))

    ok = CliRunner().invoke(peergrid, ["health", str(path), "--url", http_url + "/ok"])
    teapot = CliRunner().invoke(peergrid, ["health", str(path), "--url", http_url + "/teapot"])
    beaten(path, hearing=(60, None))
    both = CliRunner().invoke(peergrid, ["health", str(path), "--url", http_url + "/teapot"])

    assert ok.exit_code == 0 and ok.output == f"healthy: hearing 0.5 s ago, {http_url}/ok answered 200\n"
    assert teapot.exit_code == 1 and teapot.output == f"unhealthy: {http_url}/teapot answered 418\n"
    assert both.exit_code == 1 and len(both.output.splitlines()) == 2


def test_a_url_that_does_not_answer_in_time_or_at_all_is_unhealthy(tmp_path, http_url, monkeypatch):
    from cli import health
    from tests.stack import free_port

    monkeypatch.setattr(health, "URL_TIMEOUT_S", 0.5)  # of 5 s, so the test need not wait that long
    path = beaten(tmp_path / "health.json", hearing=(0.5, None))
    closed = f"http://127.0.0.1:{free_port()}/api/v1/health"

    refused = CliRunner().invoke(peergrid, ["health", str(path), "--url", closed])
    started = time.monotonic()
    slow = CliRunner().invoke(peergrid, ["health", str(path), "--url", http_url + "/slow"])

    assert refused.exit_code == 1 and refused.output.startswith(f"unhealthy: {closed} does not answer: ")
    assert slow.exit_code == 1 and slow.output == f"unhealthy: {http_url}/slow did not answer within 0.5 s\n"
    assert time.monotonic() - started < 1.5
    bad = CliRunner().invoke(peergrid, ["health", str(path), "--url", "file:///etc/passwd"])
    assert bad.exit_code == 2 and "http:// or https://" in bad.output


def test_the_command_as_docker_runs_it(tmp_path, http_url):
    path = tmp_path / "health.json"
    Liveness(path).beat("heartbeat", 10, "server unreachable since 12:00:00 UTC")

    def health(*args):
        return subprocess.run([sys.executable, "-m", "cli", "health", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    well = health(str(path), "--url", http_url + "/ok")
    gone = health(str(tmp_path / "gone.json"))

    assert well.returncode == 0, well.stderr
    assert well.stdout.startswith("healthy: heartbeat 0.") and "(server unreachable since 12:00:00 UTC)" in well.stdout
    assert gone.returncode == 1 and gone.stdout.startswith("unhealthy: there is no health file") and gone.stderr == ""


# -- the scheduler ---------------------------------------------------------------------------


def overdue(path: Path) -> set[str]:
    """The loops the health file at path names as dead, with a grace of 1 s so a test need not wait 10."""
    return {beat.name for beat in examine(path, grace_s=1).loops if beat.dead}


def went_round(path: Path, loop: str) -> float | None:
    """When the health file says loop last went round."""
    try:
        return json.loads(path.read_text())["loops"][loop]["at"]
    except (FileNotFoundError, KeyError):
        return None


def health_lines(path: Path) -> list[str]:
    return CliRunner().invoke(peergrid, ["health", str(path), "--grace", "1"]).output.splitlines()


def beating(path: Path, *names: str) -> bool:
    checkup = examine(path)
    return {b.name for b in checkup.loops} == set(names) and checkup.healthy and "starting" not in checkup.summary()


@contextmanager
def scheduler_with_health_file(tmp_path: Path, database_url: str, broker_url: str) -> Iterator[tuple[Stack, Path]]:
    """A scheduler process writing a health file, once its loops (upkeep, consumer, placement) beat."""
    path = tmp_path / "health.json"
    with Stack(tmp_path, database_url=database_url, broker_url=broker_url) as stack:
        stack.spawn("scheduler", "scheduler", "--health-file", str(path), "--loglevel", "INFO")
        wait_until(lambda: beating(path, "upkeep", "consumer", "placement"), 30,
                   "the scheduler did not beat its loops:\n" + stack.logs())
        yield stack, path
        stack.kill("scheduler")  # a warm shutdown takes seconds, and is not what these tests are about


@contextmanager
def locked(database_url: str, *tables: str) -> Iterator[object]:
    """Hold tables of the PostgreSQL store locked, so whatever touches them waits; the connection
    is yielded, to lock more."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin():
            for table in tables:
                conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield conn
    finally:
        engine.dispose()


def send_task(broker_url: str, name: str) -> None:
    from celery import Celery

    from scheduler.celery_app import SCHEDULER_QUEUE
    from scheduler.offers import broker_transport_options

    sender = Celery(set_as_current=False, broker=broker_url, broker_transport_options=broker_transport_options(broker_url))
    sender.send_task(name, queue=SCHEDULER_QUEUE)
    sender.close()


@pytest.mark.redis
@pytest.mark.postgres
def test_the_schedulers_check_fails_while_its_upkeep_or_its_consumer_is_stuck(tmp_path, postgres_url, redis_url):
    from sqlalchemy import text

    # Given a scheduler on Redis, as compose.yaml runs it, whose upkeep leads
    with scheduler_with_health_file(tmp_path, postgres_url, redis_url) as (stack, path):
        assert "upkeep" in health_lines(path)[0] and "(leading)" in health_lines(path)[0]
        # When the store holds the upkeep's lease table locked, so its loop waits on the store
        with locked(postgres_url, "leases") as conn:
            # Then the check names the upkeep, and besides it at most the placement passes, which lock a
            # row of that table to write
            wait_until(lambda: "upkeep" in overdue(path), 15, "the stuck upkeep still beats")
            assert overdue(path) <= {"upkeep", "placement"}
            [line] = [line for line in health_lines(path) if line.startswith("unhealthy: upkeep")]
            assert line.startswith("unhealthy: upkeep last went round ") and line.endswith(", leading (it goes round every 1 s)")

            # When a task waits on the store too: the solo pool runs it in the consumer's loop
            conn.execute(text("LOCK TABLE listeners IN ACCESS EXCLUSIVE MODE"))
            send_task(redis_url, "peergrid.reap_silent_nodes")
            # Then the consumer is overdue as well
            wait_until(lambda: "consumer" in overdue(path), 15, "the stuck consumer still beats:\n" + stack.logs())
            assert {"consumer", "upkeep"} <= overdue(path) <= {"consumer", "upkeep", "placement"}
        # And once the store lets go, both go round again
        wait_until(lambda: not overdue(path), 15, "the scheduler did not recover:\n" + stack.logs())


@pytest.mark.postgres
def test_on_the_embedded_broker_the_consumer_beats_from_its_loop_not_from_a_timer_thread(tmp_path, postgres_url):
    broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    # Given a scheduler on the SQL broker, where Celery runs its timer in a thread of its own
    with scheduler_with_health_file(tmp_path, postgres_url, broker_url) as (stack, path):
        # When a task holds the consumer's loop
        with locked(postgres_url, "listeners"):
            send_task(broker_url, "peergrid.reap_silent_nodes")
            wait_until(lambda: "reap_silent_nodes" in stack.logs(), 15, "the task was not received:\n" + stack.logs())
            stuck_at = went_round(path, "consumer")
            # Then the consumer stops beating for longer than its interval (1 s, and 2 s of synloop's wait)
            time.sleep(3.5)
            assert went_round(path, "consumer") == stuck_at
        # And beats again once the task ends
        wait_until(lambda: went_round(path, "consumer") > stuck_at, 10, "the consumer did not beat again")


# -- the web ---------------------------------------------------------------------------------


def test_the_webs_hearing_beats_each_time_it_marks_and_says_when_the_store_is_unreachable(tmp_path, settings):
    from scheduler.core import Core
    from scheduler.hearing import MARK_EVERY_S, Ears
    from web import create_app, start_hearing

    # Given a web process with a health file, as `peergrid web` and web.wsgi start it
    path = tmp_path / "health.json"
    app = create_app(settings.with_overrides(health_file=path))
    ears = start_hearing(app)
    try:
        # Then its hearing beats, at the pace it marks
        wait_until(lambda: beating(path, "hearing"), 10, "the web's hearing did not beat")
        assert json.loads(path.read_text())["loops"]["hearing"]["every_s"] == MARK_EVERY_S
    finally:
        ears.stop()
        ears.join(5)
        app.extensions["peergrid"].close()

    # Given one whose store is down
    down = Core.from_settings(settings.with_overrides(
        database_url="postgresql+psycopg://peergrid@127.0.0.1:1/peergrid", health_file=tmp_path / "down.json"))
    ears = Ears(down, "web-down")
    ears.start()
    try:
        # Then it still beats (the store's outage is not the web's), and says why it hears nothing
        wait_until(lambda: beating(tmp_path / "down.json", "hearing"), 10, "the web's hearing did not beat")
        assert examine(tmp_path / "down.json").summary().endswith("(the store is unreachable)")
    finally:
        ears.stop()
        ears.join(5)
        down.close()


# -- the worker ------------------------------------------------------------------------------


def test_the_workers_loops_beat_through_a_server_outage_and_a_full_node_but_not_when_stuck(tmp_path, sqlite_url):
    from tests import factories
    from worker.agent import Agent
    from worker.gpus import Inventory
    from worker.settings import WorkerSettings

    path = tmp_path / "health.json"
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
               extra_env={"PEERGRID_HEARTBEAT_INTERVAL": "0.5"}) as stack:
        stack.start_web()
        _, token, _ = factories.node(stack.core)
        # Given a CPU node's agent writing a health file (no Docker engine: none is needed to wait for offers)
        agent = Agent(WorkerSettings(server=stack.url, token=token, events=False, data_dir=tmp_path / "worker",
                                     docker_host=f"unix://{tmp_path}/no-docker.sock", health_file=path),
                      inventory=Inventory(gpus=(), message="a CPU node"))
        running = threading.Thread(target=agent.run, name="agent", daemon=True)
        running.start()
        stuck = threading.Event()
        try:
            # Then it beats both loops once registered
            wait_until(lambda: beating(path, "heartbeat", "offers"), 30, "the agent did not beat:\n" + stack.logs())

            # When the server goes away and the node's one slot is taken, so it only waits
            stack.kill("web")
            cpu = next(m for m in agent._markets if m.gpu_count == 0)
            assert agent.capacity.reserve(-1, cpu) == [] and not agent.can_take()
            # Then both loops still go round (the server's outage is not the worker's sickness)
            full_at = time.time()
            wait_until(lambda: "server unreachable since" in examine(path).summary(), 15, "no heartbeat said so")
            wait_until(lambda: went_round(path, "offers") > full_at + 1, 10, "the waiting offers loop does not beat")
            assert overdue(path) == set() and examine(path).healthy, examine(path).summary()

            # When the offers loop is stuck in a call that never returns, as a deadlock would leave it
            agent.servable = lambda: stuck.wait() and []
            # Then the check names the offers loop
            wait_until(lambda: overdue(path), 10, "the stuck offers loop still beats")
            assert overdue(path) == {"offers"}
            assert health_lines(path)[0].startswith("unhealthy: offers last went round ")
        finally:
            stuck.set()
            agent.stop()
            running.join(15)
