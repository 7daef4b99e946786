"""The REST API for people: submit, read, logs, cancel; who may see what."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from scheduler.offers import PASS_QUEUE

from tests import factories
from tests.factories import bearer, hello_world


def offers_on(broker_url: str, queue: str = "market.cpu") -> list[dict]:
    with Connection(broker_url) as conn:
        bound = Queue(queue, Exchange("", type="direct"), routing_key=queue)(conn)
        bound.declare()
        found = []
        while (message := bound.get(no_ack=True)) is not None:
            found.append(message.payload)
        return found


def test_submit_stores_the_job_and_asks_for_a_placement_pass(client, core):
    _, token = factories.user(core)

    response = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token))

    assert response.status_code == 201, response.json
    body = response.json
    assert body["state"] == "queued"
    assert body["max_cost"] == 100 * 3600  # CPU price × one core × default timeout × one try
    job = client.get(f"/api/v1/jobs/{body['id']}", headers=bearer(token)).json
    assert [op["id"] for op in job["ops"]] == ["hello-world"]
    attempt = job["ops"][0]["attempts"][0]
    assert attempt["state"] == "queued" and attempt["node"] is None
    # No node is told yet: the scheduler's next pass places it, asked for once the submit committed
    assert offers_on(core.settings.broker_url, "market.cpu") == []
    assert offers_on(core.settings.broker_url, PASS_QUEUE) == [{"pass": True}]


def test_a_wrong_definition_gets_every_problem_and_stores_nothing(client, core):
    _, token = factories.user(core)
    bad = {"version": "0.1", "ops": [{"id": "x", "type": "container/run", "args": {"cmd": 3}}]}

    response = client.post("/api/v1/jobs", json=bad, headers=bearer(token))

    assert response.status_code == 422
    paths = {e["path"] for e in response.json["errors"]}
    assert paths == {"$.ops[0].args.image", "$.ops[0].args.cmd"}
    assert client.get("/api/v1/jobs", headers=bearer(token)).json["total"] == 0
    assert offers_on(core.settings.broker_url) == []


def test_a_body_that_is_not_json_is_a_problem_at_the_root(client, core):
    _, token = factories.user(core)
    response = client.post("/api/v1/jobs", data="{nope", headers={**bearer(token), "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json["errors"] == [{"path": "$", "message": "The body is not valid JSON."}]


def test_an_op_no_market_serves_is_refused_with_the_reason(client, core):
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"].update(gpu=True, required_vram=200)

    response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))

    assert response.status_code == 422
    assert "No market serves an op that needs 1 GPU with at least 200 GB" in response.json["errors"][0]["message"]


def test_gpu_ops_go_to_the_cheapest_market_that_covers_them(client, core):
    _, token = factories.user(core)

    def market_of(**args):
        doc = hello_world("busybox")
        doc["ops"][0]["args"].update(args)
        job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(token)).json["id"]
        return client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["market"]

    assert market_of() == "cpu"
    assert market_of(gpu=True) == "gpu"
    assert market_of(gpu=True, required_vram=16) == "gpu-24gb"
    assert market_of(gpu=True, required_vram=40) == "gpu-48gb"
    assert market_of(gpu_count=4, required_vram=80) == "gpu-4x-80gb"
    assert market_of(gpu_count=2) == "gpu-2x"
    assert market_of(gpu=True, market="gpu-80gb") == "gpu-80gb"
    named_wrong = hello_world("busybox")
    named_wrong["ops"][0]["args"].update(gpu=True, market="cpu")
    refused = client.post("/api/v1/jobs", json=named_wrong, headers=bearer(token))
    assert refused.status_code == 422 and "Market 'cpu' cannot serve" in refused.json["errors"][0]["message"]


def test_required_cuda_picks_a_market_that_guarantees_it(client, core):
    _, admin = factories.user(core, admin=True)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["gpu"] = True
    doc["meta"] = {"system_requirements": {"required_cuda": ["12.4", "12.2"], "vram_total_mb": 20000}}

    refused = client.post("/api/v1/jobs", json=doc, headers=bearer(admin))
    assert refused.status_code == 422
    assert "with at least 20 GB of memory each and CUDA 12.2 or newer" in refused.json["errors"][0]["message"]

    client.post("/api/v1/admin/markets", json={"slug": "cuda12", "gpu_count": 1, "min_vram_mb": 24_000,
                                               "min_cuda_version": "12.2", "price_per_second": 500}, headers=bearer(admin))
    job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(admin)).json["id"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(admin)).json["ops"][0]["market"] == "cuda12"


def test_admins_define_and_edit_markets_and_others_may_not(client, core):
    _, admin = factories.user(core, admin=True)
    _, user = factories.user(core)
    spec = {"slug": "a100", "name": "A100s", "gpu_count": 1, "min_vram_mb": 80_000,
            "gpu_models": ["NVIDIA A100-SXM4-80GB"], "price_per_second": 900, "fee_ppm": 50_000}

    assert client.post("/api/v1/admin/markets", json=spec, headers=bearer(user)).status_code == 403
    created = client.post("/api/v1/admin/markets", json=spec, headers=bearer(admin))
    assert created.status_code == 201 and created.json["queue"] == "market.a100"
    assert client.post("/api/v1/admin/markets", json=spec, headers=bearer(admin)).status_code == 409
    bad = client.post("/api/v1/admin/markets", json={**spec, "slug": "b", "price_per_second": -1, "colour": "red"},
                      headers=bearer(admin))
    assert bad.status_code == 400
    assert "price_per_second must be a whole number" in bad.json["error"] and "colour is not a market field" in bad.json["error"]
    edited = client.patch("/api/v1/admin/markets/a100", json={"price_per_second": 950}, headers=bearer(admin))
    assert edited.json["price_per_second"] == 950
    assert client.patch("/api/v1/admin/markets/a100", json={"fee_ppm": 1}, headers=bearer(user)).status_code == 403


def test_calls_without_a_valid_token_are_refused(client, core):
    assert client.get("/api/v1/jobs").status_code == 401
    response = client.get("/api/v1/jobs", headers=bearer("pg_not-a-token"))
    assert response.status_code == 401
    assert "unknown" in response.json["error"]
    _, node_token, _ = factories.node(core)
    assert client.get("/api/v1/jobs", headers=bearer(node_token)).status_code == 401


def test_another_users_job_is_not_found(client, core):
    _, mine = factories.user(core)
    _, theirs = factories.user(core)
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(mine)).json["id"]

    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/logs"):
        assert client.get(path, headers=bearer(theirs)).status_code == 404
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(theirs)).status_code == 404
    assert client.get("/api/v1/jobs/999999", headers=bearer(mine)).status_code == 404


def test_jobs_list_filters_by_state_and_pages(client, core):
    _, token = factories.user(core)
    ids = [client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"] for _ in range(3)]
    client.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=bearer(token))

    queued = client.get("/api/v1/jobs?state=queued", headers=bearer(token)).json
    cancelled = client.get("/api/v1/jobs?state=cancelled", headers=bearer(token)).json

    assert [j["id"] for j in queued["jobs"]] == [ids[2], ids[1]]
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
    bad = client.get("/api/v1/jobs?state=sleeping", headers=bearer(token))
    assert bad.status_code == 400 and "Unknown state" in bad.json["error"]


def test_cancel_ends_every_op_and_attempt(client, core):
    _, token = factories.user(core)
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]

    job = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(token)).json

    assert job["state"] == "cancelled" and job["finished_at"]
    assert job["ops"][0]["state"] == "cancelled"
    assert job["ops"][0]["attempts"][0]["state"] == "cancelled"


def test_nodes_are_created_with_a_token_shown_once(client, core):
    _, token = factories.user(core)

    created = client.post("/api/v1/nodes", json={"name": "rig-1"}, headers=bearer(token))
    again = client.post("/api/v1/nodes", json={"name": "rig-1"}, headers=bearer(token))
    listed = client.get("/api/v1/nodes", headers=bearer(token)).json["nodes"]

    assert created.status_code == 201 and created.json["token"].startswith("pgn_")
    assert again.status_code == 409
    assert [n["name"] for n in listed] == ["rig-1"]
    assert "token" not in listed[0]


def test_markets_and_health(client, core):
    _, token = factories.user(core)
    markets = client.get("/api/v1/markets", headers=bearer(token)).json["markets"]
    assert markets[0]["slug"] == "cpu" and "gpu-80gb" in [m["slug"] for m in markets]
    assert client.get("/api/v1/health").json == {"ok": True}


def test_an_oversized_body_is_cut_off_with_a_clear_message(client, core, app):
    _, token = factories.user(core)
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = client.post("/api/v1/jobs", data="x" * 5000, headers={**bearer(token), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json["error"]


def test_an_ops_timeout_is_capped_by_its_market(client, core):
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["timeout"] = 10**7
    job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(token)).json["id"]
    op = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]
    assert op["timeout"] == 86_400


def test_extend_refuses_what_it_cannot_do(client, core):
    _, token = factories.user(core)
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/extend", json={"seconds": "soon"}, headers=bearer(token)).status_code == 400
    assert client.post(f"/api/v1/jobs/{job_id}/extend", json={"seconds": -5}, headers=bearer(token)).status_code == 400
    client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(token))
    ended = client.post(f"/api/v1/jobs/{job_id}/extend", json={"seconds": 60}, headers=bearer(token))
    assert ended.status_code == 409 and "has ended" in ended.json["error"]


def test_removed_nodes_are_not_listed_and_cannot_be_drained(client, core):
    from scheduler.models import Node
    from scheduler.nodes import remove_node

    _, token = factories.user(core)
    _, admin = factories.user(core, admin=True)
    kept = client.post("/api/v1/nodes", json={"name": "rig-kept"}, headers=bearer(token)).json["id"]
    gone = client.post("/api/v1/nodes", json={"name": "rig-gone"}, headers=bearer(token)).json["id"]
    with core.transaction() as session:
        remove_node(session, session.get(Node, gone))

    for who in (token, admin):
        assert [n["id"] for n in client.get("/api/v1/nodes", headers=bearer(who)).json["nodes"]] == [kept]
        drained = client.post(f"/api/v1/nodes/{gone}/drain", json={"drain": True}, headers=bearer(who))
        assert drained.status_code == 404 and drained.json["error"] == f"There is no node {gone}."
    assert client.post(f"/api/v1/nodes/{kept}/drain", json={"drain": True}, headers=bearer(token)).status_code == 200
    with core.sessions() as session:
        assert not session.get(Node, gone).drain_requested


DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_beyond_reading_is_a_bad_request_on_every_route(client, core):
    _, token = factories.user(core)
    headers = {**bearer(token), "Content-Type": "application/json"}

    for path in ("/api/v1/jobs", "/api/v1/nodes", "/api/v1/payouts", "/api/v1/admin/grants"):
        response = client.post(path, data=DEEP, headers=headers)
        assert response.status_code in (400, 403), (path, response.status_code, response.json)
    job = client.post("/api/v1/jobs", data=DEEP, headers=headers)
    assert job.status_code == 400 and "deeper" in job.json["error"]


def test_a_definition_nested_deeper_than_the_server_walks_is_a_problem_at_its_path(client, core):
    _, token = factories.user(core)
    doc = hello_world("busybox")
    deep: list = []
    doc["ops"][0]["args"]["resources"] = [{"nested": deep}]
    for _ in range(900):
        deep.append([])
        deep = deep[0]

    response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))

    assert response.status_code == 422, response.json
    (problem,) = response.json["errors"]
    assert problem["path"].startswith("$.ops[0].args.resources[0].nested[0]") and "levels" in problem["message"]


def test_a_node_name_with_a_nul_or_control_character_is_refused(database_url, tmp_path):
    with factories.served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        for name in ("a\u0000b", "rig\n2", "tab\there"):
            response = client.post("/api/v1/nodes", json={"name": name}, headers=bearer(token))
            assert response.status_code == 400, (name, response.status_code)
            assert "control character" in response.json["error"]
        assert client.get("/api/v1/nodes", headers=bearer(token)).json["nodes"] == []


def test_text_the_store_cannot_keep_is_refused_before_it_gets_there(database_url, tmp_path):
    with factories.served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        for execution in ({"group": "g\u0000"}, {"group": "g" * 201}):
            doc = hello_world("busybox")
            doc["ops"][0]["execution"] = execution
            response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
            assert response.status_code == 422, (execution, response.status_code, response.json)
            assert [e["path"] for e in response.json["errors"]] == ["$.ops[0].execution.group"]
        doc = hello_world("busybox", cmd=["echo", "a\u0000b"])
        doc["ops"][0]["args"]["env"] = {"A": "\u0000"}
        response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
        assert response.status_code == 422
        assert {e["path"] for e in response.json["errors"]} == {"$.ops[0].args.cmd[1]", "$.ops[0].args.env.A"}
        assert client.get("/api/v1/jobs", headers=bearer(token)).json["total"] == 0


@pytest.mark.parametrize("key", [
    "../../../escaped/meta-llama:8b?x=1#top%20", "..", ".", "a/../b", "/lead", "a//b/", "x..y", "gpt-oss:120b",
    "ünïcode/日本", "x" * 200,
])
def test_an_op_id_with_slashes_and_url_characters_keeps_its_output_under_the_data_dir(client, core, key):
    import io

    from protocol.names import op_slug
    from scheduler.artifacts import artifacts_root, store_artifact
    from scheduler.attempts import claim_attempt, finish_attempt, start_attempt
    from scheduler.models import Attempt, Node
    from scheduler.nodes import NodeReport, register

    _, token = factories.user(core)
    node_id, _, _ = factories.node(core)
    doc = hello_world("busybox")
    doc["ops"][0].update(id=key)
    doc["ops"][0]["args"]["output"] = "/out"
    job_id = client.post("/api/v1/jobs", json=doc, headers=bearer(token)).json["id"]
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(slots=1))
        attempt_id = session.scalar(select(Attempt.id))
        claim_attempt(session, node, attempt_id)
        start_attempt(session, node, attempt_id)
        store_artifact(session, session.get(Attempt, attempt_id), io.BytesIO(b"archive"),
                       data_dir=core.settings.data_dir, max_bytes=1000)
        finish_attempt(session, node, attempt_id, exit_code=0)

    (listed,) = client.get(f"/api/v1/jobs/{job_id}/artifacts", headers=bearer(token)).json["artifacts"]
    download = client.get(listed["url"], headers=bearer(token))

    assert listed["op"] == key
    # A client that folds '.' and '..' segments (browsers, urllib3) still reaches the same op.
    assert "/." not in listed["url"].replace("%2E", "")
    assert download.status_code == 200 and download.data == b"archive"
    assert download.headers["Content-Disposition"] == f"attachment; filename=job-{job_id}-{op_slug(key)}.tar.gz"
    root = artifacts_root(core.settings.data_dir).resolve()
    stored = [p for p in core.settings.data_dir.rglob("*.tar.gz")]
    assert stored and all(p.resolve().is_relative_to(root) for p in stored), stored


def test_a_nul_anywhere_the_store_would_see_it_is_a_bad_request(database_url, tmp_path):
    import re

    with factories.served(database_url, tmp_path) as (core, client):
        _, admin = factories.user(core, admin=True)
        login = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True)).group(1)

        signed_in = client.post("/login", data={"email": "ann\u0000@example.com", "password": "long enough pw",
                                                "csrf_token": token})
        granted = client.post("/api/v1/admin/grants", json={"email": "a\u0000@example.com", "amount": 1},
                              headers=bearer(admin))
        market = client.post("/api/v1/admin/markets", json={"slug": "nul-name", "name": "a\u0000b"}, headers=bearer(admin))

        # PostgreSQL cannot hold or even compare a NUL; SQLite keeps it, and finds no such account.
        if database_url.startswith("postgresql"):
            assert signed_in.status_code == granted.status_code == market.status_code == 400
            assert "NUL" in signed_in.get_data(as_text=True) and "NUL" in granted.json["error"]
        else:
            assert (signed_in.status_code, granted.status_code, market.status_code) == (401, 404, 201)
        assert client.get("/api/v1/markets", headers=bearer(admin)).status_code == 200


def test_validate_plans_a_definition_as_submit_would_and_stores_nothing(client, core):
    from scheduler.models import Job, LedgerTransaction

    _, token = factories.user(core, credits=1000)
    doc = hello_world("busybox")
    doc["ops"].append({"type": "container/run", "id": "gpt-oss:120b", "args": {"image": "x", "gpu": True}})

    answer = client.post("/api/v1/jobs/validate", json=doc, headers=bearer(token))

    assert answer.status_code == 200
    plan = answer.json
    assert plan["valid"] is True and plan["errors"] == []
    assert [(o["id"], o["market"]) for o in plan["ops"]] == [("hello-world", "cpu"), ("gpt-oss:120b", "gpu")]
    assert plan["max_cost"] == sum(o["max_cost"] for o in plan["ops"]) > 0
    assert plan["available"] == 1000 * 1_000_000
    with core.transaction() as session:
        ledger_rows = session.scalar(select(func.count()).select_from(LedgerTransaction))
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    # and submit agrees: the same job, reserving what validate said it would
    made = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
    assert made.status_code == 201 and made.json["max_cost"] == plan["max_cost"]
    with core.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LedgerTransaction)) == ledger_rows + 1


def test_validate_returns_every_problem_submit_would_refuse_at_once(client, core):
    _, token = factories.user(core, credits=1000)
    doc = hello_world("busybox")
    doc["ops"][0]["args"].update(gpus=True)
    doc["ops"].append({"type": "container/run", "id": "big", "args": {"image": "x", "gpu": True, "required_vram": 500}})
    doc["ops"].append({"type": "container/run", "id": "big", "args": {"image": "x"}})

    plan = client.post("/api/v1/jobs/validate", json=doc, headers=bearer(token)).json

    assert plan["valid"] is False
    assert {e["path"] for e in plan["errors"]} == {"$.ops[0].args.gpus", "$.ops[1]", "$.ops[2].id"}
    assert "No market serves an op that needs 1 GPU with at least 500 GB" in plan["errors"][-1]["message"]
    doc["ops"] = doc["ops"][1:2]
    doc["ops"][0]["args"]["env"] = {"HF": "%%secrets.HF_TOKEN%%"}
    plan = client.post("/api/v1/jobs/validate", json=doc, headers=bearer(token)).json
    assert plan["valid"] is False and {e["path"] for e in plan["errors"]} == {"$.ops[0]", "$.ops[0].args.env.HF"}
    assert client.post("/api/v1/jobs", json=doc, headers=bearer(token)).status_code == 422
    named = client.post("/api/v1/jobs/validate?market=nowhere", json=hello_world("busybox"), headers=bearer(token)).json
    assert not named["valid"] and "no market 'nowhere'" in named["errors"][0]["message"]


def test_validate_says_when_the_credits_would_not_cover_the_job(client, core):
    _, token = factories.user(core, credits=0)
    plan = client.post("/api/v1/jobs/validate", json=hello_world("busybox"), headers=bearer(token)).json
    assert plan["valid"] is False and plan["available"] == 0
    assert [e["path"] for e in plan["errors"]] == ["$"] and "credits" in plan["errors"][0]["message"]
    assert client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).status_code == 402
