"""A running peergrid for end-to-end tests: web, scheduler and workers as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from scheduler.core import Core
from scheduler.migrate import upgrade
from scheduler.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, root: Path, *, database_url: str, broker_url: str, extra_env: dict | None = None):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The gateway's, known before the web starts: the endpoint URLs it shows carry the HTTP one.
        self.gateway_port = free_port()
        self.gateway_ssh_port = free_port()
        self.env = {
            **os.environ,
            "PEERGRID_DATA_DIR": str(root),
            "PEERGRID_WORKER_DATA_DIR": str(root / "worker"),
            "PEERGRID_DATABASE_URL": database_url,
            "PEERGRID_BROKER_URL": broker_url,
            "PEERGRID_SECRET_KEY": "e2e-secret",
            "PEERGRID_REOFFER_AFTER": "5",
            "PEERGRID_HEARTBEAT_INTERVAL": "2",
            "PYTHONUNBUFFERED": "1",
            "PEERGRID_GATEWAY_PORT": str(self.gateway_port),
            "PEERGRID_GATEWAY_SSH_PORT": str(self.gateway_ssh_port),
            "PEERGRID_DASHBOARD_URL": self.url,
            **(extra_env or {}),
        }
        self.settings = Settings.from_env(self.env)
        upgrade(database_url)
        self.core = Core.from_settings(self.settings)
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Stop everything and remove what this cluster left on the engine; when setting up failed,
        first print what each process said."""
        if error is not None:
            print(self.logs())
        self.stop()
        self.remove_containers()

    def spawn(self, name: str, *args: str, env: dict | None = None, module: str = "cli") -> subprocess.Popen:
        log = self.root / f"{name}.log"
        if log.exists():  # a restart keeps what the first run said
            log.rename(log.with_suffix(f".{time.time_ns()}.log"))
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**self.env, **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((name, process, log))
        return process

    def start_web(self, *, processes: int = 0) -> None:
        """Start `peergrid web`; or, with processes, gunicorn as compose.yaml runs it."""
        if processes:
            self.spawn("web", "--bind", f"127.0.0.1:{self.port}", "--workers", str(processes), "--threads", "4",
                       "web.wsgi:app", module="gunicorn")
        else:
            self.spawn("web", "web", "--port", str(self.port))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/v1/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("the web server did not come up:\n" + self.logs())

    def start_gateway(self, name: str = "gateway") -> int:
        """Start `peergrid gateway` and wait until it takes connections; return its HTTP port. The
        first (named gateway) has the stack's gateway ports; another name gets a name and ports of
        its own. Workers learn of gateways when they register and at each heartbeat."""
        http, ssh, env = self.gateway_port, self.gateway_ssh_port, {}
        if name != "gateway":
            http, ssh = free_port(), free_port()
            env = {"PEERGRID_GATEWAY_NAME": name, "PEERGRID_GATEWAY_PORT": str(http),
                   "PEERGRID_GATEWAY_SSH_PORT": str(ssh), "PEERGRID_GATEWAY_SSH_ADDRESS": f"127.0.0.1:{ssh}",
                   # Gateways behind one name serve one domain: the URLs the web shows.
                   "PEERGRID_ENDPOINT_DOMAIN": self.settings.endpoint_domain}
        self.spawn(name, "gateway", env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", http), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", ssh), timeout=1):
                    return http
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the gateway {name} did not come up:\n" + self.logs())

    def start_scheduler(self) -> None:
        self.spawn("scheduler", "scheduler", "--loglevel", "INFO")

    def start_with_node(self, node_name: str) -> "Api":
        """Start the web, the scheduler and one node's worker; return the API as a new user calls it."""
        from tests import factories

        self.start_web()
        self.start_scheduler()
        _, node_token, _ = factories.node(self.core, name=node_name)
        self.start_worker(node_token)
        _, token = factories.user(self.core)
        return Api(self.url, token)

    def start_worker(self, node_token: str, *args: str, name: str = "worker", env: dict | None = None):
        return self.spawn(
            name, "worker", "--server", self.url, "--token", node_token, "--job-network", "none", *args, env=env
        )

    def start_joining_worker(self, join_token: str, node_name: str, *args: str, env: dict | None = None):
        """Start a worker, named node_name, that joins with a join token and keeps its state (the node
        token it gets) in a data dir of its own: worker-NODE_NAME."""
        env = {"PEERGRID_JOIN_TOKEN": join_token, "PEERGRID_NODE_TOKEN": "",
               "PEERGRID_WORKER_DATA_DIR": str(self.root / f"worker-{node_name}"), **(env or {})}
        return self.spawn(node_name, "worker", "--server", self.url, "--name", node_name, "--job-network", "none",
                          *args, env=env)

    def restart(self, name: str, start) -> None:
        """Stop the named process (SIGTERM, as an operator would) and start it again."""
        self.terminate(name)
        start()

    def terminate(self, name: str, sig: int = signal.SIGTERM, *, wait: float = 30) -> None:
        """Signal the named process (SIGTERM, as an operator would) and wait for it to end."""
        self.signal(name, sig)
        for each, process, _ in self.processes:
            if each == name:
                process.wait(wait)

    def signal(self, name: str, sig: int) -> None:
        """Send the named process a signal, as Ctrl-C (SIGINT) or an operator would."""
        for each, process, _ in self.processes:
            if each == name and process.poll() is None:
                process.send_signal(sig)

    def process(self, name: str) -> subprocess.Popen:
        """The named process as last started."""
        return [process for each, process, _ in self.processes if each == name][-1]

    def kill(self, name: str) -> None:
        """kill -9 the named process."""
        for each, process, _ in self.processes:
            if each == name and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def cluster(self) -> str:
        """The id its store gave this cluster: what its workers label what they make with."""
        from scheduler.nodes import cluster_id

        with self.core.transaction() as session:
            return cluster_id(session)

    def job_containers(self, job_id: int, *, running: bool = False) -> list[str]:
        """The ids of the containers this stack's cluster made for job job_id (another stack on the
        same engine may have a job of that id too)."""
        return subprocess.run(
            ["docker", "ps", "-q" if running else "-aq", "--filter", f"label=peergrid.cluster={self.cluster()}",
             "--filter", f"label=peergrid.job={job_id}"], capture_output=True, text=True,
        ).stdout.split()

    def remove_containers(self) -> None:
        """Remove what this cluster's workers left on the engine (a killed worker's container, say),
        and nothing of any other cluster's: other stacks, and other test runs, share the engine."""
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=peergrid.cluster={self.cluster()}"],
                                   capture_output=True, text=True).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)
        networks = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", f"label=peergrid.cluster={self.cluster()}"],
            capture_output=True, text=True,
        ).stdout.split()
        if networks:
            subprocess.run(["docker", "network", "rm", *networks], capture_output=True)

    def logs(self) -> str:
        out = []
        for name, _, log in self.processes:
            text = log.read_text() if log.exists() else ""
            out.append(f"--- {name} ---\n{text[-4000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for _, process, _ in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.core.close()


class Api:
    """The REST API as a test calls it."""

    def __init__(self, url: str, token: str):
        self.url = url + "/api/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params):
        response = self.http.get(self.url + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body=None):
        return self.http.post(self.url + path, json=body, timeout=10)

    def wait(self, job_id: int, *, timeout: float = 60, until=("succeeded", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}")
            if job["state"] in until:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} is still {job['state']} after {timeout}s")


@contextmanager
def embedded_stack(root: Path, database_url: str, *, worker: bool = False, **env: str) -> Iterator[Stack]:
    """A stack on database_url and the SQL broker: web, scheduler and a node `rig` (its worker
    started when asked), with `node_token` and `api` (a new user's) set; the job containers its
    cluster left are removed afterwards, and nothing of any other cluster's."""
    from tests import factories

    with Stack(root, database_url=database_url, broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}",
               extra_env=env) as stack:
        stack.start_web()
        stack.start_scheduler()
        _, stack.node_token, _ = factories.node(stack.core, name="rig")
        if worker:
            stack.start_worker(stack.node_token)
        _, token = factories.user(stack.core)
        stack.api = Api(stack.url, token)
        yield stack
