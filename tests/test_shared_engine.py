"""Two clusters on one Docker engine: each worker touches only what its own cluster made there.

Both stores are fresh, so each cluster's first node is node 1 and its first job is job 1: the
labels and names a worker used to tell its things apart by are the same in both.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests import factories
from tests.stack import Api, Stack


def run_op(key: str, image: str, cmd: str, group: str, **args) -> dict:
    return {"type": "container/run", "id": key, "args": {"image": image, "cmd": cmd, **args},
            "execution": {"group": group}}


def job(*ops) -> dict:
    return {"version": "0.1", "type": "container", "ops": list(ops)}


def op_state(api: Api, job_id: int, key: str) -> str:
    return next(op["state"] for op in api.get(f"/jobs/{job_id}")["ops"] if op["id"] == key)


def wait_for(check, stack: Stack, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)


def start_cluster(root, sqlite_template, *, worker: bool) -> Stack:
    root.mkdir()
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    stack = Stack(root, database_url=f"sqlite:///{db}", broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}",
                  extra_env={"PEERGRID_HEARTBEAT_INTERVAL": "1"})
    stack.start_web()
    stack.start_scheduler()
    stack.node_id, stack.node_token, _ = factories.node(stack.core, name="rig")
    _, token = factories.user(stack.core)
    stack.api = Api(stack.url, token)
    if worker:
        stack.start_worker(stack.node_token)
    return stack


@pytest.fixture
def clusters(tmp_path, sqlite_template, test_image):
    """Cluster A with its worker running, and cluster B whose worker is not started yet."""
    a = b = None
    try:
        a = start_cluster(tmp_path / "a", sqlite_template, worker=True)
        b = start_cluster(tmp_path / "b", sqlite_template, worker=False)
        assert a.node_id == b.node_id == 1
        yield a, b
    finally:
        for stack in (b, a):
            if stack is not None:
                stack.stop()
                stack.remove_containers()


def test_a_worker_starting_leaves_the_other_clusters_running_container_alone(clusters, test_image, docker_client):
    """Given cluster A's node 1 running an op, when cluster B's node 1 starts its worker, then A's
    container keeps running and A's op succeeds."""
    a, b = clusters
    job_id = a.api.post("/jobs", job(run_op("long", test_image, "sleep 6; echo still here", "main"))).json()["id"]
    wait_for(lambda: op_state(a.api, job_id, "long") == "running", a)
    ours = [f"peergrid.job={job_id}", f"peergrid.cluster={_cluster(a)}"]
    [running] = docker_client.containers.list(filters={"label": ours})
    assert _cluster(a) != _cluster(b)

    b.start_worker(b.node_token)
    wait_for(lambda: _node_state(b) == "online", b)  # registered: a worker clears its leftovers then
    time.sleep(1)

    still = docker_client.containers.list(filters={"label": ours, "status": "running"})
    assert [c.id for c in still] == [running.id], a.logs()
    body = a.api.wait(job_id, timeout=30)
    assert body["state"] == "succeeded", a.logs()
    logs = [line["text"] for line in a.api.get(f"/jobs/{job_id}/logs")["lines"]]
    assert logs == ["still here"]


def test_a_volume_sweep_leaves_the_other_clusters_volume_alone(clusters, test_image, docker_client):
    """Given cluster B's job 1 ended on B's node 1, when cluster A's job 1 keeps a volume on A's
    node 1 between two of its ops, then B's worker, sweeping the volumes of its ended jobs at each
    heartbeat, leaves A's volume alone, with what A wrote in it."""
    a, b = clusters
    b.start_worker(b.node_token)
    b_job = b.api.post("/jobs", job(run_op("quick", test_image, "echo b", "main"))).json()["id"]
    assert b.api.wait(b_job, timeout=30)["state"] == "succeeded", b.logs()

    name = f"scratch-{uuid.uuid4().hex[:8]}"  # a fresh name: a volume left by another run is not this one
    mount = [{"name": name, "dest": "/data"}]
    job_id = a.api.post("/jobs", job(
        {"type": "container/create-volume", "id": "vol", "args": {"name": name}, "execution": {"group": "a"}},
        run_op("write", test_image, "echo kept > /data/note.txt", "b", volumes=mount),
        run_op("hold", test_image, "sleep 6", "c"),
        run_op("read", test_image, "cat /data/note.txt", "d", volumes=mount),
    )).json()["id"]
    assert job_id == b_job
    try:
        wait_for(lambda: op_state(a.api, job_id, "hold") == "running", a)
        time.sleep(4)  # B's worker sweeps at each heartbeat, 1 s apart

        held = docker_client.volumes.list(filters={"name": name})
        assert len(held) == 1, b.logs()
        labels = held[0].attrs["Labels"] or {}
        assert (labels.get("peergrid.cluster"), labels.get("peergrid.job")) == (_cluster(a), str(job_id)), b.logs()
        body = a.api.wait(job_id, timeout=30)
        assert body["state"] == "succeeded", a.logs()
        assert [line["text"] for line in a.api.get(f"/jobs/{job_id}/logs", op="read")["lines"]] == ["kept"]
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", *(v.name for v in docker_client.volumes.list(filters={"name": name}))],
                       capture_output=True)


def _node_state(stack: Stack) -> str | None:
    from sqlalchemy import select

    from scheduler.models import Node

    with stack.core.transaction() as session:
        return session.scalar(select(Node.state).where(Node.id == stack.node_id)).value


def _cluster(stack: Stack) -> str:
    from scheduler.nodes import cluster_id

    with stack.core.transaction() as session:
        return cluster_id(session)
