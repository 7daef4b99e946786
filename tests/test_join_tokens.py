"""Join tokens: a credential that only makes nodes for its owner, one per worker that joins with it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from scheduler.models import Node
from tests import factories
from tests.factories import bearer, served
from tests.test_node_api import REPORT


@pytest.fixture
def store(database_url, tmp_path):
    """A core and a test client of an app, on SQLite and then PostgreSQL."""
    with served(database_url, tmp_path) as (core, client):
        yield core, client


def make_join_token(client, api_token: str, name: str = "rack 3") -> dict:
    made = client.post("/api/v1/join-tokens", json={"name": name}, headers=bearer(api_token))
    assert made.status_code == 201, made.json
    return made.json


def test_a_join_makes_a_node_of_the_tokens_owner_that_records_the_token(store):
    core, client = store
    owner_id, api_token = factories.user(core)
    made = make_join_token(client, api_token)
    assert made["token"].startswith("pgj_") and made["name"] == "rack 3"

    # Given two workers joining with one join token under different names
    first = client.post("/api/v1/nodes/join", json={"name": "gpu-a"}, headers=bearer(made["token"]))
    second = client.post("/api/v1/nodes/join", json={"name": "gpu-b"}, headers=bearer(made["token"]))

    # Then each is a node of its own, of the token's owner, made by that token, with a token of its own
    assert (first.status_code, second.status_code) == (201, 201), (first.json, second.json)
    assert first.json["token"].startswith("pgn_") and first.json["token"] != second.json["token"]
    with core.transaction() as session:
        nodes = session.execute(select(Node.id, Node.owner_id, Node.name, Node.join_token_id).order_by(Node.id)).all()
    assert nodes == [(first.json["id"], owner_id, "gpu-a", made["id"]), (second.json["id"], owner_id, "gpu-b", made["id"])]
    # And each node token is that node's, on the node API
    for joined in (first.json, second.json):
        answer = client.post("/api/v1/node/register", json=REPORT, headers=bearer(joined["token"]))
        assert answer.status_code == 200 and answer.json["node"]["id"] == joined["id"]
    listed = client.get("/api/v1/nodes", headers=bearer(api_token)).json["nodes"]
    assert sorted(n["name"] for n in listed) == ["gpu-a", "gpu-b"]


def test_a_second_worker_with_a_name_taken_is_told_to_name_each_worker(store):
    core, client = store
    _, api_token = factories.user(core)
    token = make_join_token(client, api_token)["token"]
    assert client.post("/api/v1/nodes/join", json={"name": "gpu"}, headers=bearer(token)).status_code == 201

    again = client.post("/api/v1/nodes/join", json={"name": " gpu "}, headers=bearer(token))

    assert again.status_code == 409
    assert "give each worker its own name (--name / PEERGRID_NODE_NAME)" in again.json["error"]


def test_an_unknown_or_revoked_join_token_joins_nothing_and_what_it_made_keeps_working(store):
    core, client = store
    _, api_token = factories.user(core)
    made = make_join_token(client, api_token)
    joined = client.post("/api/v1/nodes/join", json={"name": "gpu-a"}, headers=bearer(made["token"])).json

    revoked = client.delete(f"/api/v1/join-tokens/{made['id']}", headers=bearer(api_token))
    assert revoked.status_code == 200 and revoked.json["revoked_at"]

    for token in (made["token"], "pgj_" + "x" * 43, "anything"):
        refused = client.post("/api/v1/nodes/join", json={"name": "gpu-b"}, headers=bearer(token))
        assert refused.status_code == 401, token
        assert "PEERGRID_JOIN_TOKEN" in refused.json["error"] and refused.headers["WWW-Authenticate"]
    assert client.post("/api/v1/nodes/join", json={"name": "gpu-b"}).status_code == 401
    assert client.post("/api/v1/node/register", json=REPORT, headers=bearer(joined["token"])).status_code == 200


def test_a_bad_body_is_refused_with_a_sentence_but_only_once_the_token_is_known(store):
    core, client = store
    _, api_token = factories.user(core)
    token = make_join_token(client, api_token)["token"]

    for body in (None, [], {"name": 3}, {}):
        refused = client.post("/api/v1/nodes/join", json=body, headers=bearer(token))
        assert refused.status_code == 400 and '{"name": "..."}' in refused.json["error"], body
    empty = client.post("/api/v1/nodes/join", json={"name": "  "}, headers=bearer(token))
    assert empty.status_code == 400 and "1 to 100 characters" in empty.json["error"]
    assert client.post("/api/v1/nodes/join", json=[], headers=bearer("pgj_unknown")).status_code == 401


def test_a_join_token_does_nothing_else_and_other_tokens_do_not_join(store):
    core, client = store
    _, node_token, api_token = factories.node(core)
    token = make_join_token(client, api_token)["token"]

    # A join token is neither an API token nor a node token: it cannot spend, list or report
    for method, path in (("get", "/api/v1/jobs"), ("get", "/api/v1/join-tokens"), ("post", "/api/v1/join-tokens"),
                         ("post", "/api/v1/payouts"), ("post", "/api/v1/nodes")):
        answer = getattr(client, method)(path, json={"name": "x", "amount": 1}, headers=bearer(token))
        assert answer.status_code == 401 and "join token" in answer.json["error"], path
    refused = client.post("/api/v1/node/register", json=REPORT, headers=bearer(token))
    assert refused.status_code == 401 and "join token" in refused.json["error"]
    # Nor does an API token or a node token join
    for other in (api_token, node_token):
        assert client.post("/api/v1/nodes/join", json={"name": "x"}, headers=bearer(other)).status_code == 401


def test_the_list_counts_each_tokens_nodes_and_shows_no_secret(store):
    core, client = store
    _, api_token = factories.user(core)
    _, someone_else = factories.user(core)
    busy = make_join_token(client, api_token, "busy")
    idle = make_join_token(client, api_token, "idle")
    theirs = make_join_token(client, someone_else, "theirs")
    for name in ("a", "b"):
        client.post("/api/v1/nodes/join", json={"name": name}, headers=bearer(busy["token"]))
    client.post("/api/v1/nodes/join", json={"name": "c"}, headers=bearer(theirs["token"]))
    client.delete(f"/api/v1/join-tokens/{idle['id']}", headers=bearer(api_token))

    answer = client.get("/api/v1/join-tokens", headers=bearer(api_token))

    listed = {t["name"]: t for t in answer.json["join_tokens"]}
    assert list(listed) == ["idle", "busy"]  # newest first, and only the caller's
    assert (listed["busy"]["nodes"], listed["idle"]["nodes"]) == (2, 0)
    assert listed["busy"]["revoked_at"] is None and listed["idle"]["revoked_at"] is not None
    assert listed["busy"]["last_used_at"] is not None and listed["busy"]["prefix"] == busy["token"][:10]
    assert "token" not in listed["busy"] and "token_hash" not in listed["busy"]
    assert busy["token"] not in answer.get_data(as_text=True)


def test_revoking_someone_elses_or_an_unknown_join_token_is_not_found(store):
    core, client = store
    _, api_token = factories.user(core)
    _, someone_else = factories.user(core)
    theirs = make_join_token(client, someone_else)

    for token_id in (theirs["id"], theirs["id"] + 100):
        answer = client.delete(f"/api/v1/join-tokens/{token_id}", headers=bearer(api_token))
        assert answer.status_code == 404, token_id
    assert client.post("/api/v1/nodes/join", json={"name": "x"}, headers=bearer(theirs["token"])).status_code == 201


def test_a_join_tokens_label_is_optional_and_checked(store):
    core, client = store
    _, api_token = factories.user(core)

    plain = client.post("/api/v1/join-tokens", headers=bearer(api_token))
    assert plain.status_code == 201 and plain.json["name"] == ""
    for body in ({"name": "x" * 101}, {"name": "a\nb"}, {"name": 5}, []):
        assert client.post("/api/v1/join-tokens", json=body, headers=bearer(api_token)).status_code == 400, body
