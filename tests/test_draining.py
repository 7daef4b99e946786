"""A drain is the owner's decision: it lasts through the node going silent and coming back."""

from __future__ import annotations

from datetime import timedelta

from scheduler.nodes import reap_silent_nodes
from scheduler.states import utcnow
from tests import factories
from tests.factories import bearer, hello_world

REPORT = {"gpus": [], "running": [], "cpu_count": 2, "slots": 1}


def state(client, token: str, node_id: int) -> str:
    nodes = client.get("/api/v1/nodes", headers=bearer(token)).json["nodes"]
    return next(n["state"] for n in nodes if n["id"] == node_id)


def reap(core) -> None:
    with core.transaction() as session:
        reap_silent_nodes(session, timeout_s=30, now=utcnow() + timedelta(minutes=5))


def test_a_draining_node_that_went_offline_comes_back_draining(client, core):
    node_id, node_token, owner = factories.node(core)
    client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    client.post(f"/api/v1/nodes/{node_id}/drain", headers=bearer(owner))
    # Given a draining node that fell silent and was taken offline
    reap(core)
    assert state(client, owner, node_id) == "offline"
    # When its worker comes back
    beat = client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    # Then it is still draining and takes nothing new
    assert beat.json["node"]["state"] == "draining"
    attempt = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(owner)).json
    job = client.get(f"/api/v1/jobs/{attempt['id']}", headers=bearer(owner)).json
    attempt_id = job["ops"][0]["attempts"][0]["id"]
    refused = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    assert refused.status_code == 409 and "draining" in refused.json["error"]
    # And once undrained it takes work again
    client.post(f"/api/v1/nodes/{node_id}/drain", json={"drain": False}, headers=bearer(owner))
    assert client.post("/api/v1/node/heartbeat", json=REPORT, headers=bearer(node_token)).json["state"] == "online"
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200


def test_draining_an_offline_node_shows_it_offline_until_it_returns(client, core):
    node_id, node_token, owner = factories.node(core)
    client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    reap(core)
    drained = client.post(f"/api/v1/nodes/{node_id}/drain", headers=bearer(owner))
    assert drained.status_code == 200 and drained.json["state"] == "offline"
    assert client.post("/api/v1/node/heartbeat", json=REPORT, headers=bearer(node_token)).json["state"] == "draining"
