"""`peergrid up`: everything on one machine, a first admin login, and a clean Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.factories import hello_world
from tests.stack import free_port


def start_up(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path), "--port", str(port), *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, port


def read_until(process: subprocess.Popen, marker: str, timeout: float = 60) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} never appeared:\n" + "".join(seen))


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_up_runs_everything_and_stops_cleanly_on_ctrl_c(tmp_path, test_image):
    process, port = start_up(tmp_path)
    try:
        banner = read_until(process, "Ctrl-C stops everything")
        assert f"peergrid is running: http://127.0.0.1:{port}/" in banner
        assert re.search(r"endpoints: http://<endpoint>\.localhost:\d+/ \(the gateway", banner), banner
        login = re.search(r"admin login: (\S+) / (\S+)", banner)
        assert login, banner
        email, password = login.groups()

        # The admin can sign in to the dashboard with what was printed.
        web = requests.Session()
        page = web.get(f"http://127.0.0.1:{port}/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        signed_in = web.post(f"http://127.0.0.1:{port}/login", data={"email": email, "password": password, "csrf_token": csrf})
        assert signed_in.status_code == 200 and "Your jobs" in signed_in.text

        # A job runs on the local worker.
        token = subprocess.run(
            [sys.executable, "-m", "cli", "admin", "create-token", email],
            env={**os.environ, "PEERGRID_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, check=True,
        ).stdout.strip()
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {token}"
        job_id = api.post(f"http://127.0.0.1:{port}/api/v1/jobs", json=hello_world(test_image)).json()["id"]
        deadline = time.monotonic() + 60
        while (state := api.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job_id}").json()["state"]) not in (
            "succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state == "succeeded"

        children = children_of(process.pid)
        assert len(children) == 4  # web, scheduler, gateway, worker
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        assert "peergrid: stopped." in process.stdout.read()
        assert not [pid for pid in children if alive(pid)]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_second_run_keeps_the_admin_and_prints_no_password(tmp_path, docker_client):
    for run in range(2):
        process, _ = start_up(tmp_path, "--no-worker")
        try:
            banner = read_until(process, "Ctrl-C stops everything")
            assert ("admin login" in banner) == (run == 0)
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert (tmp_path / "admin-password.txt").stat().st_mode & 0o077 == 0


def test_without_docker_the_web_app_still_serves_and_says_what_to_do(tmp_path):
    process, port = start_up(tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    try:
        banner = read_until(process, "Ctrl-C stops everything")
        assert "no local worker: The Docker engine" in banner
        assert "Start it" in banner
        assert requests.get(f"http://127.0.0.1:{port}/login").status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [pid for pid in pids if alive(pid)]:
            return True
        time.sleep(0.2)
    return False


def test_killing_up_outright_takes_its_children_with_it(tmp_path, docker_client):
    process, _ = start_up(tmp_path, "--no-worker")
    try:
        read_until(process, "Ctrl-C stops everything")
        children = children_of(process.pid)
        assert len(children) == 3  # web, scheduler, gateway
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group, as a crash or `kill -9 -PGID` would
        process.wait()
        assert _gone(children), [pid for pid in children if alive(pid)]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_second_up_on_the_same_data_dir_or_port_refuses_and_says_why(tmp_path, docker_client):
    first, port = start_up(tmp_path / "one", "--no-worker")
    try:
        read_until(first, "Ctrl-C stops everything")
        again = subprocess.run(
            [sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path / "one"), "--port", str(free_port()),
             "--no-worker"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert f"already runs with the data dir {tmp_path / 'one'} (pid {first.pid})" in again.stdout
        busy = subprocess.run(
            [sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path / "two"), "--port", str(port), "--no-worker"],
            capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in busy.stdout
        assert "peergrid is running" not in busy.stdout
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/health").ok  # the first one is untouched
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(60)
