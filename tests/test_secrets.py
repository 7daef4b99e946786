"""Secrets: kept per account, named in job definitions, handed over only in the claim answer to
the node that won it, and masked as *** in what that node reports."""

from __future__ import annotations

import json

from scheduler.models import Op
from scheduler.offers import offer_for
from tests import factories
from tests.factories import bearer, hello_world, served
from protocol.messages import LogRecord, LogsAnswer
from worker.logs import LogShipper
from worker.runtime import container_spec

TOKEN = "tok-5b1e0c7d9a2f4e6b8c3d1f0a"
REGISTRY_PASSWORD = "reg-pass-93c1d7e2a4b6"
NODE_REPORT = {"hostname": "rig", "cpu_count": 4, "memory_mb": 8000, "slots": 2}


def with_env(doc: dict, **env: str) -> dict:
    doc["ops"][0]["args"]["env"] = env
    return doc


def put_secret(client, token: str, name: str, value: str):
    return client.put(f"/api/v1/secrets/{name}", json={"value": value}, headers=bearer(token))


def node_headers(client, core) -> dict:
    _, node_token, _ = factories.node(core)
    assert client.post("/api/v1/node/register", json=NODE_REPORT, headers=bearer(node_token)).status_code == 200
    return bearer(node_token)


def test_secrets_are_kept_per_person_and_no_answer_carries_a_value(database_url, tmp_path):
    with served(database_url, tmp_path) as (core, client):
        _, ann = factories.user(core)
        _, bob = factories.user(core)

        created = put_secret(client, ann, "TOKEN", "first value")
        replaced = put_secret(client, ann, "TOKEN", TOKEN)
        listing = client.get("/api/v1/secrets", headers=bearer(ann))

        assert created.status_code == 201 and replaced.status_code == 200
        assert [s["name"] for s in listing.json["secrets"]] == ["TOKEN"]
        for answer in (created, replaced, listing):
            assert TOKEN not in answer.get_data(as_text=True) and "first value" not in answer.get_data(as_text=True)
        assert client.get("/api/v1/secrets", headers=bearer(bob)).json == {"secrets": []}
        assert client.delete("/api/v1/secrets/TOKEN", headers=bearer(bob)).status_code == 404
        assert client.delete("/api/v1/secrets/TOKEN", headers=bearer(ann)).status_code == 204
        assert client.get("/api/v1/secrets", headers=bearer(ann)).json == {"secrets": []}


def test_unusable_names_and_values_are_refused_with_a_sentence(client, core):
    _, token = factories.user(core)

    lower = put_secret(client, token, "hf_token", "x")
    empty = put_secret(client, token, "HF_TOKEN", "")
    missing = client.put("/api/v1/secrets/HF_TOKEN", json={}, headers=bearer(token))
    by_cookie_only = client.put("/api/v1/secrets/HF_TOKEN", json={"value": "x"})

    assert lower.status_code == 400 and "capital letters" in lower.json["error"]
    assert empty.status_code == 400 and "non-empty" in empty.json["error"]
    assert missing.status_code == 400 and '{"value"' in missing.json["error"]
    assert by_cookie_only.status_code == 401


def test_a_job_naming_a_secret_its_submitter_lacks_is_refused_with_how_to_make_it(client, core):
    _, ann = factories.user(core)
    _, bob = factories.user(core)
    put_secret(client, bob, "TOKEN", TOKEN)  # someone else's secret of that name does not count
    doc = with_env(hello_world("busybox"), TOKEN="%%secrets.TOKEN%%")
    doc["ops"][0]["args"]["gpu"] = "yes"  # and the definition's own problems come back with it

    response = client.post("/api/v1/jobs", json=doc, headers=bearer(ann))

    assert response.status_code == 422
    assert {"path": "$.ops[0].args.env.TOKEN", "message": (
        "There is no secret TOKEN in your account: create it with `peergrid secret set TOKEN` "
        "(or on the Account page), then submit again.")} in response.json["errors"]
    assert "$.ops[0].args.gpu" in [e["path"] for e in response.json["errors"]]
    assert client.get("/api/v1/jobs", headers=bearer(ann)).json["total"] == 0


def registry_job() -> dict:
    doc = with_env(hello_world("registry.example.com/ann/app:1"), TOKEN="%%secrets.TOKEN%%",
                   HEADER="Bearer %%secrets.TOKEN%%", PLAIN="plain")
    doc["ops"][0]["args"]["authentication"] = {
        "docker": {"username": "ann", "password": "%%secrets.REGISTRY%%", "server": "registry.example.com"}}
    return doc


def test_only_the_claim_answer_carries_the_values(database_url, tmp_path):
    """Given a job using two secrets, when it is stored, offered, read and claimed, then only the
    claim answer holds their values, with what the node must mask."""
    with served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        put_secret(client, token, "TOKEN", TOKEN)
        put_secret(client, token, "REGISTRY", REGISTRY_PASSWORD)
        put_secret(client, token, "UNUSED", "never-sent-to-the-node")
        job_id = client.post("/api/v1/jobs", json=registry_job(), headers=bearer(token)).json["id"]
        job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token))
        attempt_id = job.json["ops"][0]["attempts"][0]["id"]
        with core.transaction() as session:
            op = session.query(Op).one()
            stored = json.dumps([op.spec, op.job.definition])
            offer = json.dumps(offer_for(op.attempts[0], node_id=1).to_wire())

        claimed = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node_headers(client, core)).json

        spec = claimed["attempt"]["spec"]
        assert spec["env"] == {"TOKEN": TOKEN, "HEADER": f"Bearer {TOKEN}", "PLAIN": "plain"}
        assert spec["authentication"] == {
            "docker": {"username": "ann", "password": REGISTRY_PASSWORD, "server": "registry.example.com"}}
        assert sorted(claimed["attempt"]["redact"]) == sorted([TOKEN, REGISTRY_PASSWORD])
        assert "never-sent-to-the-node" not in json.dumps(claimed)
        assert "%%secrets.TOKEN%%" in stored and "%%secrets.REGISTRY%%" in stored
        for text in (stored, offer, job.get_data(as_text=True)):
            assert TOKEN not in text and REGISTRY_PASSWORD not in text


def test_the_server_masks_what_a_node_reports_unmasked(database_url, tmp_path):
    with served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        put_secret(client, token, "TOKEN", TOKEN)
        put_secret(client, token, "KEY", "-----BEGIN KEY-----\nline-one-of-the-key\n-----END KEY-----")
        doc = with_env(hello_world("busybox"), TOKEN="%%secrets.TOKEN%%")
        doc["ops"][0]["results"] = {"seen": "seen=(.*)"}
        job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(token)).json["id"]
        attempt_id = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["attempts"][0]["id"]
        node = node_headers(client, core)
        client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node)
        client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=node)

        lines = [{"seq": 1, "stream": "stdout", "text": f"seen={TOKEN}"},
                 {"seq": 2, "stream": "stderr", "text": "line-one-of-the-key"}]
        client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": lines}, headers=node)
        client.post(f"/api/v1/node/attempts/{attempt_id}/finished",
                    json={"exit_code": 3, "error": f"failed with {TOKEN}"}, headers=node)

        stored = client.get(f"/api/v1/jobs/{job_id}/logs", headers=bearer(token)).json["lines"]
        job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token))
        assert [line["text"] for line in stored] == ["seen=***", "***"]
        assert job.json["ops"][0]["results"] == {"seen": ["seen=***", "***"]}
        assert job.json["ops"][0]["error"] == "failed with ***"
        assert TOKEN not in job.get_data(as_text=True)


def test_an_op_whose_secret_was_deleted_fails_when_claimed_saying_why(client, core):
    _, token = factories.user(core)
    put_secret(client, token, "TOKEN", TOKEN)
    job_id = client.post("/api/v1/jobs", json=with_env(hello_world("busybox"), TOKEN="%%secrets.TOKEN%%"),
                         headers=bearer(token)).json["id"]
    attempt_id = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["attempts"][0]["id"]
    client.delete("/api/v1/secrets/TOKEN", headers=bearer(token))

    answer = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node_headers(client, core))

    assert answer.status_code == 200 and answer.json["attempt"] is None
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    assert job["state"] == "failed"
    assert job["ops"][0]["error"] == (
        "hello-world uses the secret TOKEN, which its owner no longer has: create it again with "
        "`peergrid secret set TOKEN` and submit the job again."
    )
    assert job["ops"][0]["attempts"][0]["cost"] == 0


def test_a_secret_named_by_a_result_alone_is_not_revealed(client, core):
    """Given an op whose env takes a parent's result, when that result reads %%secrets.X%%, then
    the node gets the text, not X's value: only names the definition wrote are revealed."""
    _, token = factories.user(core)
    put_secret(client, token, "OTHER", "other-secret-value")
    doc = with_env(hello_world("busybox"), FROM_PARENT="%%ops.parent.results.out%%")
    doc["ops"][0]["execution"] = {"depends_on": ["parent"]}
    doc["ops"].insert(0, {"type": "container/run", "id": "parent", "args": {"image": "busybox"},
                          "results": {"out": "out=(.*)"}})
    job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(token)).json["id"]
    node = node_headers(client, core)
    parent = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["attempts"][0]["id"]
    client.post(f"/api/v1/node/attempts/{parent}/claim", headers=node)
    client.post(f"/api/v1/node/attempts/{parent}/started", headers=node)
    finished = client.post(f"/api/v1/node/attempts/{parent}/finished", headers=node, json={
        "exit_code": 0, "lines": [{"seq": 1, "stream": "stdout", "text": "out=%%secrets.OTHER%%"}]})
    child = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][1]["attempts"][0]["id"]

    # The child is handed to the node with the parent's end, claimed for it: what it carries is the claim's
    [claimed] = finished.json["next"]
    assert claimed["id"] == child

    assert "%%secrets.OTHER%%" in claimed["spec"]["env"]["FROM_PARENT"]
    assert "other-secret-value" not in json.dumps(claimed) and claimed["redact"] == []


class RecordingClient:
    """The node API as the log shipper sees it, keeping each batch it is sent."""

    def __init__(self):
        self.lines: list[dict] = []

    def logs(self, attempt_id: int, lines: list[LogRecord]) -> LogsAnswer:
        self.lines.extend(line.to_wire() for line in lines)
        return LogsAnswer(stored=len(lines))


def test_the_worker_masks_secret_values_before_shipping_a_line():
    client = RecordingClient()
    shipper = LogShipper(client, 1, interval_s=0.01, redact=[TOKEN, f"{TOKEN}-longer"])
    shipper.add("stdout", f"token {TOKEN}, longer {TOKEN}-longer")
    shipper.close()
    assert [line["text"] for line in client.lines] == ["token ***, longer ***"]
    assert shipper.mask(f"error: {TOKEN}") == "error: ***"


def test_a_container_spec_never_shows_its_env_or_registry_login():
    spec = container_spec({"image": "registry.example.com/ann/app:1", "env": {"TOKEN": TOKEN},
                           "authentication": {"docker": {"username": "ann", "password": REGISTRY_PASSWORD,
                                                         "server": "registry.example.com"}}}, network="none")
    assert spec.env["TOKEN"] == TOKEN
    assert spec.registry_auth == {"username": "ann", "password": REGISTRY_PASSWORD,
                                  "serveraddress": "registry.example.com"}
    assert TOKEN not in repr(spec) and REGISTRY_PASSWORD not in repr(spec)
