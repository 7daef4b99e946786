"""`peergrid up`: the whole system on one machine, as child processes stopped together."""

from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from sqlalchemy import func, select

from scheduler.accounts import create_user
from scheduler.core import Core
from scheduler.migrate import upgrade
from scheduler.models import Node, User
from scheduler.nodes import create_node
from scheduler.settings import Settings

ADMIN_EMAIL = "admin@peergrid.local"
LOCAL_NODE = "local"


def say(message: str) -> None:
    print(message, flush=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def prepare(settings: Settings) -> tuple[str | None, str]:
    """Migrate the store; on first run make the admin and the local node.

    Returns the admin's new password (None when the admin existed) and the local node's token.
    """
    upgrade(settings.database_url)
    core = Core.from_settings(settings)
    token_file = settings.data_dir / "local-node.token"
    password = None
    try:
        with core.transaction() as session:
            admin = session.scalar(select(User).where(User.is_admin.is_(True)).order_by(User.id))
            if admin is None and not session.scalar(select(func.count(User.id))):
                password = secrets.token_urlsafe(12)
                admin = create_user(
                    session, ADMIN_EMAIL, password, is_admin=True, starter_credits=settings.starter_credits
                )
            if not token_file.exists() and admin is not None:
                existing = session.scalar(select(Node).where(Node.owner_id == admin.id, Node.name == LOCAL_NODE))
                if existing is not None:
                    session.delete(existing)
                    session.flush()
                _, token = create_node(session, admin, LOCAL_NODE)
                _write_private(token_file, token)
    finally:
        core.close()
    if password:
        _write_private(settings.data_dir / "admin-password.txt", f"{ADMIN_EMAIL}\n{password}\n")
    return password, token_file.read_text().strip() if token_file.exists() else ""


def docker_problem() -> str | None:
    from worker.runtime import DockerRuntime

    return DockerRuntime(os.environ.get("PEERGRID_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or None).check()


class AlreadyRunning(Exception):
    """Raised when another `peergrid up` holds the data dir."""


def hold_data_dir(data_dir: Path):
    """Lock the data dir for this process's life, or raise AlreadyRunning naming the holder.

    Two `up`s on one data dir would share its store, broker and local node, and each one's worker
    would take the other's containers for its own leftovers. The kernel drops the lock when this
    process ends, however it ends, so a crash leaves nothing stale.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "up.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise AlreadyRunning(
            f"peergrid up already runs with the data dir {data_dir} (pid {holder}). "
            "Stop it first (Ctrl-C where it runs), or give this one another --data-dir."
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def port_problem(host: str, port: int) -> str | None:
    """Why the web could not listen on host:port, or None when it can."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the web server binds: connections of an earlier run waiting out TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            return f"port {port} on {host} is in use ({e.strerror}); is another peergrid running? Try --port."
    return None


def free_port_near(host: str, wanted: int) -> int:
    """wanted when it is free on host, else a port the kernel picks."""
    if port_problem(host, wanted) is None:
        return wanted
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_up() -> None:
    """In each child before it starts: the kernel sends it SIGTERM when `up` dies, however `up` dies,
    so no web, scheduler or worker outlives it."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # `up` died before the request took hold
        os._exit(1)


def run_up(*, host: str, port: int, data_dir: str | None, simulate_gpus: str | None, worker: bool) -> int:
    settings = Settings.from_env(data_dir=data_dir) if data_dir else Settings.from_env()
    try:
        lock = hold_data_dir(settings.data_dir)
    except AlreadyRunning as e:
        say(f"peergrid: {e}")
        return 1
    problem = port_problem(host, port)
    if problem:
        say(f"peergrid: {problem}")
        lock.close()
        return 1
    env = {**os.environ, "PEERGRID_DATA_DIR": str(settings.data_dir), "PEERGRID_SECRET_KEY": settings.secret_key}
    # The gateway's ports, free ones where the usual are taken; the web needs them too, for the
    # endpoint URLs it shows.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    gateway_port = free_port_near(host, settings.gateway_port)
    gateway_ssh_port = free_port_near(host, settings.gateway_ssh_port)
    env.update({"PEERGRID_GATEWAY_PORT": str(gateway_port), "PEERGRID_GATEWAY_SSH_PORT": str(gateway_ssh_port)})
    if not os.environ.get("PEERGRID_GATEWAY_SSH_ADDRESS"):
        env["PEERGRID_GATEWAY_SSH_ADDRESS"] = f"{reach}:{gateway_ssh_port}"
    # Each process rewrites its health file whole: sharing one, the three would hide one another's dead loops.
    env.pop("PEERGRID_HEALTH_FILE", None)
    say(f"peergrid: data in {settings.data_dir}")
    password, node_token = prepare(settings)

    children: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, *args: str, extra_env: dict | None = None) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env={**env, **(extra_env or {})},
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            preexec_fn=_die_with_up,
        )
        children.append((name, process))

    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    # A private endpoint's sign-in page links to its job's page on this dashboard.
    env.setdefault("PEERGRID_DASHBOARD_URL", url)
    spawn("web", "web", "--host", host, "--port", str(port))
    spawn("scheduler", "scheduler", "--loglevel", "WARNING")
    if not _wait_for(url + "/api/v1/health", lambda: stopping or children[0][1].poll() is not None):
        code = children[0][1].poll()
        _stop_all(children)
        if code is not None:
            say(f"peergrid: the web server exited with code {code}; is port {port} free? Try --port.")
            return 1
        return 0

    # Before the worker, which learns the gateway's address and key when it registers.
    spawn("gateway", "gateway", "--host", host, "--port", str(gateway_port), "--ssh-port", str(gateway_ssh_port))
    if not _wait_for_port(reach, gateway_port, lambda: stopping or children[-1][1].poll() is not None):
        say(f"peergrid: the gateway did not start on port {gateway_port}; services' endpoints will not be served.")

    problem = docker_problem() if worker else None
    if worker and problem:
        say(f"peergrid: no local worker: {problem}")
        say("peergrid: the dashboard and API run; jobs wait until a worker with Docker joins.")
    elif worker:
        # The worker's state goes beside the server's data, unless told otherwise: one folder holds it all.
        worker_dir = os.environ.get("PEERGRID_WORKER_DATA_DIR") or str(settings.data_dir / "worker")
        args = ["worker", "--server", url, "--name", LOCAL_NODE, "--data-dir", worker_dir]
        if simulate_gpus:
            args += ["--simulate-gpus", simulate_gpus]
        # The token goes by environment: in argv, `ps` would show it to every user of the machine.
        spawn("worker", *args, extra_env={"PEERGRID_NODE_TOKEN": node_token})

    say(f"peergrid is running: {url}/")
    say(f"  endpoints: http://<endpoint>.localhost:{gateway_port}/ (the gateway; workers tunnel to {reach}:{gateway_ssh_port})")
    if password:
        say(f"  admin login: {ADMIN_EMAIL} / {password}  (also saved in {settings.data_dir / 'admin-password.txt'})")
    say("  Ctrl-C stops everything.")

    code = 0
    while not stopping:
        for name, process in children:
            if process.poll() is not None:
                say(f"peergrid: {name} exited with code {process.returncode}; stopping the rest.")
                stopping = True
                code = 1
                break
        time.sleep(0.3)
    _stop_all(children)
    say("peergrid: stopped.")
    lock.close()
    return code


def _wait_for(url: str, give_up, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        try:
            if requests.get(url, timeout=2).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def _stop_all(children: list[tuple[str, subprocess.Popen]], grace: float = 20.0) -> None:
    """Stop the worker first (it stops its containers and reports), then the rest."""
    for _, process in reversed(children):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        if process is children[-1][1]:
            _wait(process, grace)
    deadline = time.monotonic() + grace
    for _, process in children:
        if not _wait(process, max(0.1, deadline - time.monotonic())):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_port(host: str, port: int, give_up, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _wait(process: subprocess.Popen, timeout: float) -> bool:
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
