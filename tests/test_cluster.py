"""A simulated cluster on real containers: GPUs placed by capacity, and surviving a killed worker."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests import factories
from tests.stack import Api, Stack


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def one_op(image: str, cmd: str, **args) -> dict:
    return {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": "op", "args": {"image": image, "cmd": cmd, **args},
         "results": {"gpus": "(?<=GPUS=).*"}}]}


@pytest.fixture
def cluster(tmp_path, sqlite_url, test_image):
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
                  extra_env={"PEERGRID_NODE_TIMEOUT": "3", "PEERGRID_HEARTBEAT_INTERVAL": "1"}) as stack:
        stack.start_web()
        stack.start_scheduler()
        admin_id, admin_token = factories.user(stack.core, admin=True)
        stack.admin = Api(stack.url, admin_token)
        stack.tokens = {}
        yield stack


def add_worker(stack: Stack, name: str, *args: str) -> None:
    _, token, _ = factories.node(stack.core, name=name)
    stack.tokens[name] = token
    stack.start_worker(token, *args, name=name)


def test_mixed_gpu_and_cpu_ops_all_finish_without_sharing_a_gpu(cluster, test_image):
    """Given nodes with 4 GPUs, 2 GPUs and none, when 1-, 2-, 4-GPU and CPU ops arrive together,
    then all finish, each where it fits, and no two ops ever hold one GPU at the same time."""
    add_worker(cluster, "four", "--simulate-gpus", "NVIDIA A100-SXM4-80GB:80x4")
    add_worker(cluster, "two", "--simulate-gpus", "NVIDIA GeForce RTX 4090:24x2")
    add_worker(cluster, "cpu")
    deadline = time.monotonic() + 30
    while len([n for n in cluster.admin.get("/nodes")["nodes"] if n["state"] == "online"]) < 3:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    nodes = {n["name"]: n for n in cluster.admin.get("/nodes")["nodes"]}
    gpu_owner = {g["uuid"]: name for name, n in nodes.items() for g in n["gpus"]}
    assert all(g["simulated"] for g in nodes["four"]["gpus"]) and nodes["cpu"]["gpus"] == []
    assert "CPU markets only" in nodes["cpu"]["gpu_message"]

    mix = [{"gpu_count": 4}] + [{"gpu_count": 2}] * 3 + [{"gpu": True}] * 5 + [{"gpu": True, "required_vram": 40}] * 2 + [{}] * 3
    cmd = "echo GPUS=$PEERGRID_GPUS; sleep 1.5"
    job_ids = []
    for args in mix:
        response = cluster.admin.post("/jobs", one_op(test_image, cmd, **args))
        assert response.status_code == 201, response.text
        job_ids.append(response.json()["id"])
    jobs = [cluster.admin.wait(job_id, timeout=120) for job_id in job_ids]

    runs = []
    for args, body in zip(mix, jobs):
        assert body["state"] == "succeeded", (args, body, cluster.logs())
        attempt = body["ops"][0]["attempts"][-1]
        wanted = args.get("gpu_count", 1 if args.get("gpu") else 0)
        assert len(attempt["gpus"]) == wanted
        seen = body["ops"][0]["results"]["gpus"]
        assert (seen[0].split(",") if seen and seen[0] else []) == attempt["gpus"]  # the container saw its GPUs
        assert {gpu_owner[g] for g in attempt["gpus"]} <= {attempt["node"]["name"]}
        if args.get("required_vram"):
            assert attempt["node"]["name"] == "four"  # only the 80 GB cards have 40 GB
        if wanted == 4:
            assert attempt["node"]["name"] == "four"
        runs.append((attempt["node"]["name"], set(attempt["gpus"]), when(attempt["started_at"]), when(attempt["finished_at"])))

    for i, (node_a, gpus_a, start_a, end_a) in enumerate(runs):
        for node_b, gpus_b, start_b, end_b in runs[i + 1:]:
            if node_a == node_b and start_a < end_b and start_b < end_a:
                assert not gpus_a & gpus_b, "two ops held one GPU at the same time"
    assert {name for name, gpus, *_ in runs if not gpus} <= {"four", "two", "cpu"}


def test_a_killed_worker_s_op_finishes_elsewhere_and_the_lost_attempt_is_not_billed(cluster, test_image):
    """Given two workers, when the one running an op is killed -9, then the reaper loses its
    attempt and the op runs again on the other; the recovery time is printed."""
    add_worker(cluster, "first")
    job_id = cluster.admin.post("/jobs", one_op(test_image, "echo GPUS=; sleep 4; echo done")).json()["id"]
    deadline = time.monotonic() + 30
    while cluster.admin.get(f"/jobs/{job_id}")["state"] != "running":
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    add_worker(cluster, "second")
    time.sleep(1)

    killed_at = time.monotonic()
    cluster.kill("first")
    body = cluster.admin.wait(job_id, timeout=90)
    recovered = time.monotonic() - killed_at

    attempts = body["ops"][0]["attempts"]
    assert body["state"] == "succeeded", cluster.logs()
    assert [(a["state"], a["node"]["name"]) for a in attempts] == [("lost", "first"), ("succeeded", "second")]
    assert attempts[0]["cost"] == 0 and "stopped sending heartbeats" in attempts[0]["error"]
    restarted = when(attempts[1]["started_at"]) - when(attempts[0]["started_at"])
    print(f"\nrecovery: killed worker → op succeeded elsewhere in {recovered:.1f}s "
          f"(new attempt started {restarted.total_seconds():.1f}s after the first; node timeout 3s, op 4s)")
    nodes = {n["name"]: n["state"] for n in cluster.admin.get("/nodes")["nodes"]}
    assert nodes["first"] == "offline"


def test_a_free_node_does_not_idle_behind_an_op_it_cannot_run(cluster, test_image):
    """Given only a 2-GPU node, when a 4-GPU op waits, then a later 1-GPU op still runs at once."""
    add_worker(cluster, "two", "--simulate-gpus", "NVIDIA GeForce RTX 4090:24x2")
    big = cluster.admin.post("/jobs", one_op(test_image, "echo GPUS=$PEERGRID_GPUS", gpu_count=4)).json()["id"]
    small = cluster.admin.post("/jobs", one_op(test_image, "echo GPUS=$PEERGRID_GPUS", gpu=True)).json()["id"]

    assert cluster.admin.wait(small, timeout=60)["state"] == "succeeded", cluster.logs()
    waiting = cluster.admin.get(f"/jobs/{big}")
    assert waiting["state"] == "queued" and waiting["ops"][0]["attempts"][0]["node"] is None
    cluster.admin.post(f"/jobs/{big}/cancel")


def test_a_worker_whose_docker_engine_is_down_fails_jobs_with_a_sentence(cluster, test_image, tmp_path):
    _, token, _ = factories.node(cluster.core, name="no-docker")
    cluster.start_worker(token, name="no-docker", env={"DOCKER_HOST": f"unix://{tmp_path}/gone.sock"})
    body = cluster.admin.wait(cluster.admin.post("/jobs", one_op(test_image, "echo hi")).json()["id"], timeout=60)

    op = body["ops"][0]
    assert body["state"] == "failed" and op["exit_code"] is None
    assert "The Docker engine at unix://" in op["error"] and "is not answering" in op["error"] and "Start it" in op["error"]
    assert "Traceback" not in op["error"]
