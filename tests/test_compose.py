"""compose.yaml run for real: the README's "Operating at scale" walked word for word.

Its shell blocks run, as an operator would paste them, in a folder of their own (a copy of this
checkout) with a compose project of its own, on the local Docker engine. Where no registry answers,
the images compose.yaml starts from are stand-ins built from Debian (scripts/base-images). Between
the blocks the test checks what each promised; after them it shows what the README says in prose:
two workers run two ops at once, each as a node of its own; a worker keeps its node across a
restart; one scheduler of two leads, and the other takes over when it dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import IN_CI, need
from tests.outages import wait_until

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The parts of "Operating at scale" that are a walk to run, in order.
WALK = ("From an empty folder to a succeeded job", "Workers and GPUs", "Services behind compose",
        "Restarts and a second scheduler")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


def readme_blocks(heading: str) -> list[str]:
    """The ```sh blocks under a ### heading of the README, in order."""
    start = README.index(f"\n### {heading}\n")
    end = README.find("\n#", start + 1)
    section = README[start:end if end != -1 else len(README)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_walk_is_all_there():
    blocks = [block for heading in WALK for block in readme_blocks(heading)]
    text = "\n".join(blocks)
    for step in ("docker-compose build", "admin create-user", "admin create-token", "admin grant",
                 "node join-token", "--scale worker=2", "job submit hello-world.json --wait",
                 "job submit output.json --wait", "PEERGRID_SIMULATE_GPUS", "restart scheduler",
                 "--scale scheduler=2", "--wait-ready", "curl -s"):
        assert step in text, step
    # Debian packages Compose v1 only: the README's commands are the ones it has.
    assert "docker compose " not in text


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if probe.returncode == 0 else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """An operator's folder: a copy of this checkout with its own compose project."""

    def __init__(self, folder: Path, compose: list[str], *, image: str):
        self.folder = folder
        self.project = f"pgwalk{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.gateway_port = _free_port()
        bin_dir = folder.parent / "bin"
        bin_dir.mkdir()
        if compose != ["docker-compose"]:  # the v2 plugin answers to the README's docker-compose
            shim = bin_dir / "docker-compose"
            shim.write_text('#!/bin/sh\nexec docker compose "$@"\n')
            shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "COMPOSE_PROJECT_NAME": self.project,
            "PEERGRID_PORT": str(self.port),
            # The gateway's published ports, free ones, so the walk takes no fixed port of the machine.
            "PEERGRID_GATEWAY_PORT": str(self.gateway_port),
            "PEERGRID_GATEWAY_SSH_PORT": str(_free_port()),
            "JOB_IMAGE": image,
            # Its endpoint URLs name the gateway's port, as the README says to set it when that moves.
            "PEERGRID_ENDPOINT_DOMAIN": f"localhost:{self.gateway_port}",
        }
        for name in ("PEERGRID_TOKEN", "PEERGRID_SERVER", "COMPOSE_FILE", "DOCKER_BUILDKIT"):
            self.env.pop(name, None)
        self.transcript: list[str] = []

    def sh(self, script: str, *, timeout: float = 600) -> str:
        """Run shell lines in the folder, as bash with -e and pipefail; return what they printed."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=self.folder, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )
        self.transcript.append(f"$ {script}\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, f"exit {done.returncode}:\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return done.stdout

    def dotenv(self) -> dict[str, str]:
        lines = (self.folder / ".env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def api(self, method: str, path: str, **kwargs):
        token = self.dotenv()["PEERGRID_TOKEN"]
        response = requests.request(
            method, f"http://127.0.0.1:{self.port}/api/v1{path}", headers={"Authorization": f"Bearer {token}"},
            timeout=30, **kwargs,
        )
        assert response.status_code < 400, response.text
        return response.json()

    def health(self, service: str, index: int) -> str:
        """What `peergrid health` says in that container, healthy or not."""
        done = subprocess.run(["docker-compose", "exec", "-T", f"--index={index}", service, "peergrid", "health"],
                              cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def container_ids(self, service: str) -> list[str]:
        return self.sh(f"docker-compose ps -q {service}").split()

    def logs(self, container: str) -> str:
        done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
        return done.stdout + done.stderr

    def down(self) -> None:
        subprocess.run(
            ["docker-compose", "down", "-v", "--remove-orphans", "-t", "5"], cwd=self.folder, env=self.env,
            capture_output=True, timeout=300,
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, test_image):
    compose = _compose_command()
    need(compose is not None, "Docker Compose (Debian's docker-compose, or the v2 plugin)")
    made = subprocess.run(["bash", str(ROOT / "scripts" / "base-images")], capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        message = f"the images compose.yaml starts from could not be made:\n{made.stderr[-3000:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("operator") / "peergrid"
    folder.mkdir()
    # What a fresh checkout holds: tracked files, and new ones git does not ignore.
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    deployment = Deployment(folder, compose, image=test_image)
    yield deployment
    # What its workers made on the engine carries its cluster's id, which they logged on registering.
    said = subprocess.run(["docker-compose", "logs", "--no-color", "worker"], cwd=deployment.folder, env=deployment.env,
                          capture_output=True, text=True, timeout=60).stdout
    clusters = set(re.findall(r"of cluster (\w+)", said))
    deployment.down()
    for cluster in filter(None, clusters):
        for container in docker_client.containers.list(all=True, filters={"label": f"peergrid.cluster={cluster}"}):
            container.remove(force=True)
        for volume in docker_client.volumes.list(filters={"label": f"peergrid.cluster={cluster}"}):
            volume.remove(force=True)
        for network in docker_client.networks.list(filters={"label": f"peergrid.cluster={cluster}"}):
            network.remove()
    if os.environ.get("PEERGRID_COMPOSE_TRANSCRIPT"):
        Path(os.environ["PEERGRID_COMPOSE_TRANSCRIPT"]).write_text("\n".join(deployment.transcript))


def _leads(health: str) -> bool:
    """Whether a scheduler's `peergrid health` says it is healthy and holds the upkeep lease."""
    return health.startswith("healthy:") and re.search(r"upkeep [\d.]+ s ago \(leading\)", health) is not None


def _nodes(deployment: Deployment) -> list[dict]:
    return deployment.api("GET", "/nodes")["nodes"]


def test_operating_at_scale_word_for_word(deployment, docker_client):
    run = deployment.sh
    server, accounts, workers, jobs = readme_blocks(WALK[0])
    (simulated,) = readme_blocks(WALK[1])
    (service,) = readme_blocks(WALK[2])
    (restarts,) = readme_blocks(WALK[3])

    # Given an empty folder, when the server block runs, then the web answers and every
    # long-lived service's loops go round.
    started = time.monotonic()
    run(server, timeout=900)
    up_s = time.monotonic() - started
    assert deployment.health("web", 1).startswith("healthy: hearing"), deployment.health("web", 1)
    wait_until(lambda: _leads(deployment.health("scheduler", 1)), 60, "the scheduler never led its upkeep")

    # The admin, an API token in .env, and credits.
    out = run(accounts)
    assert "Created admin account admin@example.org" in out and "Granted 100" in out
    assert deployment.dotenv()["PEERGRID_TOKEN"].startswith("pg_")

    # Two workers join as two nodes of their own.
    run(workers)
    wait_until(lambda: len([n for n in _nodes(deployment) if n["state"] == "online"]) == 2, 120,
               "two workers did not come online as two nodes")
    nodes = {n["id"]: n for n in _nodes(deployment)}
    assert len({n["name"] for n in nodes.values()}) == 2
    for index in (1, 2):
        wait_until(lambda: deployment.health("worker", index).startswith("healthy:"), 60, f"worker {index} is unhealthy")

    # Hello world, and an output folder that lands in the web's data volume.
    out = run(jobs)
    assert out.splitlines() == ["[hello-world] hello world", "test-output"], out
    # Nothing the server runs met a file it may not write, nor a control socket it may not make.
    said = run("docker-compose logs --no-color web scheduler gateway")
    assert "Permission denied" not in said and "Control server error" not in said, said

    # The two workers add capacity: two ops that sleep run at once, one on each node.
    pair = {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": f"nap-{i}", "execution": {"group": "naps"},
         "args": {"image": deployment.env["JOB_IMAGE"], "cmd": "sleep 4"}} for i in (1, 2)]}
    job = deployment.api("POST", "/jobs", json=pair)["id"]
    wait_until(lambda: deployment.api("GET", f"/jobs/{job}")["state"] == "succeeded", 120, f"job {job} did not succeed")
    ops = deployment.api("GET", f"/jobs/{job}")["ops"]
    assert {op["node"]["id"] for op in ops} == set(nodes)
    (a,), (b,) = (op["attempts"] for op in ops)
    assert max(a["started_at"], b["started_at"]) < min(a["finished_at"], b["finished_at"]), "they ran one after the other"

    # Simulated GPUs: the workers come back as the same nodes, with GPUs, and run a GPU op.
    run(simulated)
    wait_until(lambda: all(n["state"] == "online" and n["gpus"] for n in _nodes(deployment)), 120,
               "the workers did not come back with simulated GPUs")
    again = {n["id"]: n for n in _nodes(deployment)}
    assert set(again) == set(nodes), "a restarted worker joined as a new node"
    assert all(n["simulated"] and n["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090" for n in again.values())
    gpu_job = {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": "on-a-gpu", "args": {"image": deployment.env["JOB_IMAGE"], "gpu": True,
                                                            "cmd": ["echo", "gpu"]}}]}
    job = deployment.api("POST", "/jobs", json=gpu_job)["id"]
    wait_until(lambda: deployment.api("GET", f"/jobs/{job}")["state"] == "succeeded", 120, f"job {job} did not succeed")
    assert deployment.api("GET", f"/jobs/{job}")["ops"][0]["attempts"][0]["gpus"]

    # A service's URL, fetched with curl on the host's loopback through the gateway, from a job
    # container that a worker in a container reaches on a network they share; then cancelled.
    out = run(service)
    assert re.fullmatch(r"hello from a service\njob \d+: cancelled\n", out), out
    url = (deployment.folder / "service.txt").read_text().splitlines()[1].split()[2]
    assert url.endswith(f".localhost:{deployment.gateway_port}/"), url

    # Work queued across a scheduler restart is not lost; a second scheduler stands by.
    out = run(restarts)
    assert re.search(r"^job \d+ succeeded$", out, flags=re.M) and "(standing by)" in out, out
    first, second = deployment.container_ids("scheduler")
    assert _leads(deployment.health("scheduler", 1))

    # Neither places nor runs timed work twice: jobs submitted now get one attempt each, and only
    # the leader ran chores.
    batch = [deployment.api("POST", "/jobs", json=json.loads((deployment.folder / "hello-world.json").read_text()))["id"]
             for _ in range(4)]
    wait_until(lambda: all(deployment.api("GET", f"/jobs/{j}")["state"] == "succeeded" for j in batch), 120,
               "the batch did not succeed")
    for j in batch:
        assert len(deployment.api("GET", f"/jobs/{j}")["ops"][0]["attempts"]) == 1
    assert "leading the scheduler's upkeep" not in deployment.logs(second)

    # When the leader dies (and stays dead: no restart policy brings it back), the other takes over.
    leader = docker_client.containers.get(first)
    leader.update(restart_policy={"Name": "no"})
    leader.kill()
    wait_until(lambda: _leads(deployment.health("scheduler", 2)), 60, "the standby never took the lease over")
    assert "leading the scheduler's upkeep" in deployment.logs(second)

    # Its health check is of its loops, not of its process: frozen, it is there but unhealthy.
    survivor = docker_client.containers.get(second)
    os.kill(survivor.attrs["State"]["Pid"], signal.SIGSTOP)
    try:
        wait_until(lambda: "unhealthy: upkeep last went round" in deployment.health("scheduler", 2), 60,
                   "a frozen scheduler still looked healthy")
    finally:
        os.kill(survivor.attrs["State"]["Pid"], signal.SIGCONT)
    wait_until(lambda: _leads(deployment.health("scheduler", 2)), 60, "the thawed scheduler did not lead again")
    print(f"server up in {up_s:.0f} s; walk in {time.monotonic() - started:.0f} s")
