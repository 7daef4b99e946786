"""`peergrid health`, and the loops each long-lived process beats into its health file: the scheduler's
upkeep and consumer, the web's hearing, the worker's heartbeat and offers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main as peergrid
from protocol.liveness import Liveness

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
