"""The node API: registering, claiming (one winner), reports fenced by attempt, finishing."""

from __future__ import annotations

import threading

import pytest

from scheduler.attempts import claim_attempt
from scheduler.core import Core
from scheduler.errors import Conflict
from scheduler.models import Node
from scheduler.settings import Settings
from tests import factories
from tests.factories import bearer, hello_world

REPORT = {"hostname": "rig", "cpu_count": 8, "memory_mb": 32000, "slots": 2, "agent_version": "test"}


def submit(client, token, doc=None) -> dict:
    response = client.post("/api/v1/jobs", json=doc or hello_world("busybox"), headers=bearer(token))
    assert response.status_code == 201, response.json
    return client.get(f"/api/v1/jobs/{response.json['id']}", headers=bearer(token)).json


def first_attempt(job: dict) -> int:
    return job["ops"][0]["attempts"][-1]["id"]


def registered(client, core) -> tuple[int, str]:
    node_id, node_token, _ = factories.node(core)
    response = client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    assert response.status_code == 200, response.json
    return node_id, node_token


@pytest.fixture
def provider(client, core):
    return registered(client, core)


def test_register_answers_with_the_broker_and_markets(client, core, provider):
    _, node_token = provider
    answer = client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token)).json
    assert answer["broker_url"] == core.settings.worker_broker_url
    assert [m["queue"] for m in answer["markets"]] == ["market.cpu"]
    assert answer["node"]["state"] == "online"


def test_a_user_token_is_not_a_node_token(client, core):
    _, api_token = factories.user(core)
    assert client.post("/api/v1/node/register", json=REPORT, headers=bearer(api_token)).status_code == 401


def test_the_whole_report_cycle(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    node = bearer(node_token)

    claimed = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node).json["attempt"]
    assert claimed["spec"]["image"] == "busybox"
    assert claimed["spec"]["cmd"] == ["echo", "hello", "world"]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=node).status_code == 200
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["state"] == "running"

    lines = [{"seq": 1, "stream": "stdout", "text": "hello"}, {"seq": 2, "stream": "stderr", "text": "warn"}]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": lines}, headers=node).json == {"stored": 2}
    # A retried batch is not stored twice.
    again = lines + [{"seq": 3, "stream": "stdout", "text": "world"}]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": again}, headers=node).json == {"stored": 1}

    done = client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0}, headers=node)
    assert done.json["state"] == "succeeded"
    final = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json
    assert final["state"] == "succeeded"
    assert final["ops"][0]["exit_code"] == 0
    assert final["ops"][0]["node"]["id"] == provider[0]
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=bearer(token)).json["lines"]
    assert [(line["stream"], line["text"]) for line in logs] == [("stdout", "hello"), ("stderr", "warn"), ("stdout", "world")]


def test_a_non_zero_exit_fails_the_job_with_the_code(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))

    client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 3}, headers=bearer(node_token))

    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert op["state"] == "failed" and op["exit_code"] == 3
    assert op["error"] == "The container exited with code 3."


def test_a_failed_op_with_tries_left_gets_a_new_attempt(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["restart_policy"] = {"policy": "on-failure", "restart_tries": 1}
    job = submit(client, token, doc)
    first = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{first}/claim", headers=bearer(node_token))
    client.post(f"/api/v1/node/attempts/{first}/finished", json={"exit_code": 1}, headers=bearer(node_token))

    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert op["state"] == "queued"
    assert [a["state"] for a in op["attempts"]] == ["failed", "queued"]
    second = op["attempts"][1]["id"]
    client.post(f"/api/v1/node/attempts/{second}/claim", headers=bearer(node_token))
    client.post(f"/api/v1/node/attempts/{second}/finished", json={"exit_code": 0}, headers=bearer(node_token))
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["state"] == "succeeded"


def test_a_second_claim_loses(client, core, provider):
    _, node_token = provider
    _, other_token = registered(client, core)
    _, token = factories.user(core)
    attempt_id = first_attempt(submit(client, token))

    assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200
    lost = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(other_token))
    assert lost.status_code == 409 and "claimed" in lost.json["error"]
    assert client.post("/api/v1/node/attempts/424242/claim", headers=bearer(node_token)).status_code == 404


def test_a_node_that_never_registered_takes_no_work(client, core):
    _, node_token, _ = factories.node(core)
    _, token = factories.user(core)
    attempt_id = first_attempt(submit(client, token))
    refused = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    assert refused.status_code == 409 and "offline" in refused.json["error"]


def test_reports_about_an_attempt_that_is_not_the_nodes_are_refused(client, core, provider):
    _, node_token = provider
    _, other_token = registered(client, core)
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))

    for path, body in (("started", {}), ("logs", {"lines": []}), ("finished", {"exit_code": 0})):
        response = client.post(f"/api/v1/node/attempts/{attempt_id}/{path}", json=body, headers=bearer(other_token))
        assert response.status_code == 409, path

    # Once cancelled, the attempt is no longer the claimant's either, and its heartbeat says stop.
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=bearer(token))
    late = client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": []}, headers=bearer(node_token))
    assert late.status_code == 409
    beat = client.post("/api/v1/node/heartbeat", json={**REPORT, "running": [attempt_id]}, headers=bearer(node_token))
    assert beat.json["cancel"] == [attempt_id]


def test_heartbeats_keep_the_gpu_inventory(client, core, provider):
    _, node_token = provider
    gpu = {"uuid": "GPU-1", "name": "NVIDIA A100", "memory_total_mb": 81920, "memory_free_mb": 80000, "index": 0}
    client.post("/api/v1/node/heartbeat", json={**REPORT, "gpus": [gpu], "simulated": True}, headers=bearer(node_token))
    client.post("/api/v1/node/heartbeat", json={**REPORT, "gpus": [{**gpu, "memory_free_mb": 1}], "simulated": True},
                headers=bearer(node_token))
    with core.sessions() as session:
        node = session.get(Node, provider[0])
        assert [(g.uuid, g.memory_free_mb) for g in node.gpus] == [("GPU-1", 1)]
        assert node.simulated and node.last_heartbeat_at is not None


def test_exactly_one_of_many_concurrent_claimants_wins(database_url, tmp_path):
    """Given one queued attempt and eight nodes, when all claim at once, then one wins."""
    settings = Settings.from_env(
        {"PEERGRID_DATABASE_URL": database_url, "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.sqlite",
         "PEERGRID_SECRET_KEY": "x"},
        data_dir=tmp_path,
    )
    core = Core.from_settings(settings)
    try:
        from web import create_app

        client = create_app(core=core).test_client()
        _, token = factories.user(core)
        attempt_id = first_attempt(submit(client, token))
        nodes = [registered(client, core)[0] for _ in range(8)]
        barrier = threading.Barrier(len(nodes))
        winners, losers = [], []

        def claim(node_id: int) -> None:
            session = core.sessions()
            try:
                node = session.get(Node, node_id)
                barrier.wait()
                claim_attempt(session, node, attempt_id)
                session.commit()
                winners.append(node_id)
            except Conflict:
                session.rollback()
                losers.append(node_id)
            finally:
                session.close()

        threads = [threading.Thread(target=claim, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        assert len(winners) == 1 and len(losers) == 7
        job = client.get("/api/v1/jobs", headers=bearer(token)).json["jobs"][0]
        attempt = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"][0]
        assert attempt["state"] == "claimed" and attempt["node"]["id"] == winners[0]
    finally:
        core.close()


def test_an_output_over_the_limit_is_refused_with_a_clear_message(client, core, provider, app):
    _, node_token = provider
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["output"] = "/out"
    attempt_id = first_attempt(submit(client, token, doc))
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    object.__setattr__(core.settings, "max_artifact_bytes", 1024 * 1024)

    too_big = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"x" * (1024 * 1024 + 1),
                         headers=bearer(node_token))
    assert too_big.status_code == 413
    assert "larger than the 1 MB limit" in too_big.json["error"]

    damaged = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc",
                         headers={**bearer(node_token), "X-Checksum-Sha256": "0" * 64})
    assert damaged.status_code == 400 and "checksum" in damaged.json["error"]

    import hashlib

    good = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc",
                      headers={**bearer(node_token), "X-Checksum-Sha256": hashlib.sha256(b"abc").hexdigest()})
    assert good.status_code == 201 and good.json["size"] == 3
    again = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc", headers=bearer(node_token))
    assert again.status_code == 409
    leftovers = list((core.settings.data_dir / "artifacts").rglob("*.part"))
    assert leftovers == []
