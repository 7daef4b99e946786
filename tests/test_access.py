"""Every route, called by every kind of caller: anonymous, the owner, another user, the owner's
node, another node, and an admin. Each route declares its policy here; a new route without one fails.
The gateway is a route too: each caller, by API token and by the dashboard's hop, against a private
and a public endpoint."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from scheduler import ledger
from scheduler.attempts import claim_attempt
from scheduler.models import Attempt, Endpoint, Node, Op, User
from scheduler.nodes import NodeReport, register
from scheduler.secrets import set_secret
from tests import factories
from tests.factories import PASSWORD, bearer, hello_world
from web import create_app

CALLERS = ("anon", "owner", "other", "node", "other_node", "admin", "joiner")

POLICY = {
    "static": "public", "api.health": "public", "api.openapi": "public", "dashboard.login": "public",
    "account.signup": "public", "metrics.metrics": "public",
    "api.jobs_index": "api_user", "api.create_job": "api_user", "api.validate_job": "api_user", "api.nodes_index": "api_user",
    "api.nodes_create": "api_user", "api.markets_index": "api_user", "api.balance": "api_user",
    "api.my_movements": "api_user", "api.payout_request": "api_user", "api.my_payouts": "api_user",
    "api.secrets_index": "api_user", "api.secret_put": "api_user", "api.secret_delete": "api_owned",
    "api.job_show": "api_owned", "api.job_log_lines": "api_owned", "api.job_cancel": "api_owned",
    "api.array_show": "api_owned", "api.array_cancel": "api_owned",
    "api.job_extend": "api_owned", "api.job_artifact_list": "api_owned", "api.job_artifact_download": "api_owned",
    "api.nodes_drain": "api_owned",
    "api.join_tokens_create": "api_user", "api.join_tokens_index": "api_user", "api.join_tokens_revoke": "api_owned",
    "api.nodes_join": "join",
    "api.admin_books": "api_admin", "api.admin_grant": "api_admin", "api.admin_ledger": "api_admin",
    "api.admin_ledger_csv": "api_admin", "api.markets_create": "api_admin", "api.markets_update": "api_admin",
    "api.admin_payouts": "api_admin", "api.admin_payouts_csv": "api_admin", "api.admin_payout_approve": "api_admin",
    "api.admin_payout_reject": "api_admin",
    "api.admin_quotas": "api_admin", "api.admin_user_limits": "api_admin", "api.admin_quota_put": "api_admin",
    "api.admin_quota_delete": "api_admin", "api.admin_max_priority": "api_admin", "api.admin_job_priority": "api_admin",
    "api.node_register": "node_any", "api.node_heartbeat": "node_any",
    "api.attempt_claim": "node_owned", "api.attempt_started": "node_owned", "api.attempt_logs": "node_owned",
    "api.attempt_finished": "node_owned", "api.attempt_release": "node_owned", "api.attempt_artifact": "node_owned",
    "api.attempt_health": "node_owned",
    "api.attempt_input": "node_owned",
    "dashboard.home": "page_user", "dashboard.jobs": "page_user", "dashboard.nodes": "page_user",
    "dashboard.node_create": "page_user", "dashboard.credits_page": "page_user", "dashboard.payout_request": "page_user",
    "dashboard.logout": "page_user", "account.account": "page_user", "account.token_create": "page_user",
    "account.secret_set": "page_user", "account.secret_delete": "page_owned",
    "submit.submit_page": "page_user", "submit.submit_post": "page_user", "submit.submit_check": "page_user",
    "dashboard.endpoint_open": "page_owner",
    "dashboard.job": "page_owned", "dashboard.job_cancel": "page_owned", "dashboard.job_extend": "page_owned",
    "dashboard.job_array": "page_owned", "dashboard.job_array_cancel": "page_owned",
    "dashboard.join_token_create": "page_user", "dashboard.join_token_revoke": "page_owned",
    "dashboard.node_drain": "page_owned", "dashboard.node_remove": "page_owned", "account.token_revoke": "page_owned",
    "admin.ledger_page": "page_admin", "admin.markets": "page_admin", "admin.market_create": "page_admin",
    "admin.market_edit": "page_admin", "admin.node_ban": "page_admin", "admin.payout_queue": "page_admin",
    "admin.payout_decide": "page_admin", "admin.users": "page_admin", "admin.grant": "page_admin",
    "admin.quota_set": "page_admin", "admin.max_priority": "page_admin",
}


def expected(policy: str, caller: str) -> str:
    """What a caller must get: 'ok' (allowed; any answer but 401/403 and below 500), 'denied'
    (401/403, or a redirect to sign in for pages), or 'hidden' (404, or 409 for another node's attempt).
    A join token makes nodes and does nothing else."""
    if policy == "public":
        return "ok"
    if policy == "join" or caller == "joiner":
        return "ok" if (policy, caller) == ("join", "joiner") else "denied"
    if policy.startswith("api"):
        if caller in ("anon", "node", "other_node"):
            return "denied"
        if policy == "api_admin":
            return "ok" if caller == "admin" else "denied"
        if policy == "api_owned" and caller == "other":
            return "hidden"
        return "ok"
    if policy.startswith("node"):
        if caller not in ("node", "other_node"):
            return "denied"
        return "hidden" if policy == "node_owned" and caller == "other_node" else "ok"
    # dashboard pages: by session only; a bearer token is no session
    if caller in ("anon", "node", "other_node"):
        return "denied"
    if policy == "page_admin":
        return "ok" if caller == "admin" else "denied"
    if policy in ("page_owned", "page_owner") and caller == "other":
        return "hidden"
    if policy == "page_owner" and caller == "admin":  # an admin sees the job, but only its owner opens its endpoint
        return "denied"
    return "ok"


@dataclass
class World:
    app: object
    tokens: dict
    ids: dict


def _service(*, private: bool) -> dict:
    doc = hello_world("busybox", cmd="httpd -f -p 8000")
    doc["ops"][0]["args"].update(expose=8000, private=private)
    return doc


def build_world(core) -> World:
    owner_id, owner_token = factories.user(core, email="owner@example.com")
    other_id, other_token = factories.user(core, email="other@example.com")
    _, admin_token = factories.user(core, email="admin@example.com", admin=True)
    app = create_app(core=core)
    client = app.test_client()
    # The owner's join token is join token 1, as its API token is API token 1.
    join_token = client.post("/api/v1/join-tokens", json={"name": "rack"}, headers=bearer(owner_token)).json["token"]
    # A service with a private endpoint, so the hop route has one to open.
    job_id = client.post("/api/v1/jobs", json=_service(private=True), headers=bearer(owner_token)).json["id"]
    node_token = client.post("/api/v1/nodes", json={"name": "owners-node"}, headers=bearer(owner_token)).json["token"]
    other_node_token = client.post("/api/v1/nodes", json={"name": "others-node"}, headers=bearer(other_token)).json["token"]
    with core.transaction() as session:
        owner = session.get(User, owner_id)
        node = session.query(Node).filter_by(name="owners-node").one()
        other_node = session.query(Node).filter_by(name="others-node").one()
        register(session, node, NodeReport())
        register(session, other_node, NodeReport())
        attempt = session.query(Attempt).one()
        claim_attempt(session, node, attempt.id)
        label = session.query(Endpoint).one().label
        ledger.post(session, "test:earn", "settle", [(ledger.account(session, ledger.K.ISSUANCE), -5_000_000),
                                                     (ledger.account(session, ledger.K.EARNINGS, owner.id), 5_000_000)])
        payout = ledger.request_payout(session, owner, 2_000_000, minimum=1)
        set_secret(session, owner, "TOKEN", "owners-secret-value")
        ids = {"job_id": job_id, "attempt_id": attempt.id, "node_id": node.id, "payout_id": payout.id,
               "user_id": other_id, "slug": "cpu", "op_key": "hello-world", "filename": "peergrid.css",
               "name": "TOKEN", "label": label, "user_ref": "other@example.com"}
    # An array of the owner's, made after the claim above, which took the one attempt there was.
    ids["array_id"] = client.post("/api/v1/jobs?array=0-1", json=hello_world("busybox"),
                                  headers=bearer(owner_token)).json["id"]
    tokens = {"owner": owner_token, "other": other_token, "admin": admin_token,
              "node": node_token, "other_node": other_node_token, "joiner": join_token}
    ids["token_id"] = 1  # the owner's first API token, made by the factory
    return World(app=app, tokens=tokens, ids=ids)


def routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def test_every_route_has_a_policy(app):
    missing = sorted({rule.endpoint for rule, _ in routes(app)} - set(POLICY))
    assert not missing, f"routes without an access policy in tests/test_access.py: {missing}"


def _call(world: World, rule, method: str, caller: str):
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(world.ids[m.group(1)]), rule.rule)
    client = world.app.test_client()
    headers = {}
    data = None
    policy = POLICY[rule.endpoint]
    if policy.startswith("page") and caller in ("owner", "other", "admin"):
        email = {"owner": "owner@example.com", "other": "other@example.com", "admin": "admin@example.com"}[caller]
        page = client.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
        # Signing in starts a new session, and with it a new CSRF token.
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/account").get_data(as_text=True)).group(1)
        data = {"csrf_token": csrf, "minutes": "1", "name": "x", "credits": "1", "reason": "r", "reference": "r"}
        headers["X-CSRF-Token"] = csrf
    elif caller != "anon":
        headers.update(bearer(world.tokens[caller]))
    kwargs = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        if data is not None and rule.endpoint != "submit.submit_check":
            kwargs["data"] = data
        else:
            kwargs["json"] = {"seconds": 60, "amount": 1_000_000, "reference": "r", "reason": "r", "name": "n",
                              "email": "other@example.com", "lines": [], "exit_code": 0, "definition": "{}",
                              "value": "a-new-value"}
    return client.open(path, method=method, **kwargs)


@pytest.mark.parametrize("endpoint", sorted(POLICY))
def test_each_caller_gets_what_the_policy_says(core, endpoint):
    world = build_world(core)
    for rule, method in routes(world.app):
        if rule.endpoint != endpoint:
            continue
        for caller in CALLERS:
            response = _call(world, rule, method, caller)
            status = response.status_code
            want = expected(POLICY[endpoint], caller)
            where = f"{method} {rule.rule} as {caller}: {status}"
            assert status < 500, where
            if want == "ok":
                assert status not in (401, 403), where
                if endpoint != "dashboard.logout":  # signing out sends one to the sign-in page, as it should
                    assert not (status == 302 and "/login" in response.headers.get("Location", "")), where
            elif want == "denied":
                signed_out = status == 302 and "/login" in response.headers.get("Location", "")
                assert status in (401, 403) or signed_out or (status == 400 and method != "GET"), where
            else:
                assert status in (404, 409), where
            body = response.get_data(as_text=True)
            if caller in ("other", "node", "other_node", "anon", "joiner") and status < 300 and "owner@example.com" in body:
                raise AssertionError(f"{where} leaked the owner's data")
            if "owners-secret-value" in body:  # the job uses no secret, so not even its claim shows one
                raise AssertionError(f"{where} showed a secret's value")


# -- the gateway -------------------------------------------------------------------------------

# What each caller gets from the gateway: the service ('ok') or a 403 ('denied').
GATEWAY_POLICY = {"private": "owner", "public": "public"}


def gateway_expected(policy: str, caller: str) -> str:
    return "ok" if policy == "public" or caller == "owner" else "denied"


def test_the_gateway_answers_each_caller_as_the_policy_says(core):
    """Every caller against the world's private endpoint and a public one: by bearer token (each
    caller's own), and as a signed-in person following the dashboard's hop route to the endpoint."""
    import http.client

    from gateway.service import Gateway
    from scheduler.attempts import claim_attempt
    from tests.test_dashboard import sign_in
    from tests.test_endpoint_access import LoopThread, forward_all, stand_in_service
    from worker.tunnel import Tunnel

    world = build_world(core)
    public_job = world.app.test_client().post("/api/v1/jobs", json=_service(private=False),
                                              headers=bearer(world.tokens["owner"])).json["id"]
    with core.transaction() as session:
        node = session.get(Node, world.ids["node_id"])
        node.slots = 2
        attempt = session.query(Attempt).join(Op).filter(Op.job_id == public_job).one()
        claim_attempt(session, node, attempt.id)
        labels = {"private": world.ids["label"], "public": session.query(Endpoint).filter_by(attempt_id=attempt.id).one().label}
        jobs = {"private": world.ids["job_id"], "public": public_job}

    loop = LoopThread()
    gateway = Gateway(core, ssh_port=0, http_port=0)
    loop.run(gateway.start())
    target = loop.run(asyncio.start_server(stand_in_service, "127.0.0.1", 0))
    tunnel = Tunnel(f"127.0.0.1:{gateway.ssh_port}", gateway.key.export_public_key().decode(), world.ids["node_id"],
                    world.tokens["node"])
    tunnel.start()

    def get(label: str, path: str = "/", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": f"{label}.localhost:{gateway.http_port}", **(headers or {})})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    try:
        forward_all(gateway, tunnel, labels.values(), target.sockets[0].getsockname()[1])
        for endpoint, policy in GATEWAY_POLICY.items():
            label = labels[endpoint]
            for caller in CALLERS:
                # By bearer token (none for anon)
                headers = {} if caller == "anon" else bearer(world.tokens[caller])
                status, _, body = get(label, headers=headers)
                where = f"the gateway's {endpoint} endpoint, {caller} by token: {status}"
                if gateway_expected(policy, caller) == "ok":
                    assert status == 200 and b"GET / HTTP/1.1" in body, where
                    assert b"authorization" not in body.lower(), f"{where}: the service saw the token"
                else:
                    assert status == 403 and b"GET / HTTP/1.1" not in body, where
                # As a person signed in to the dashboard, following the job page's link to it
                if caller not in ("owner", "other", "admin"):
                    continue
                client = world.app.test_client()
                sign_in(client, f"{caller}@example.com")
                hop = client.get(f"/jobs/{jobs[endpoint]}/endpoints/{label}")
                cookie = None
                if hop.status_code == 302 and "/__peergrid/hop?" in hop.headers["Location"]:
                    hop_to = urlsplit(hop.headers["Location"])
                    assert hop_to.hostname == f"{label}.localhost", hop.headers
                    status, answer_headers, _ = get(label, f"{hop_to.path}?{hop_to.query}")
                    if status == 303:
                        cookie = answer_headers["Set-Cookie"].split(";", 1)[0]
                elif hop.status_code == 302:  # a public endpoint: straight to its URL
                    assert urlsplit(hop.headers["Location"]).hostname == f"{label}.localhost", hop.headers
                status, _, body = get(label, headers={"Cookie": cookie} if cookie else {})
                where = f"the gateway's {endpoint} endpoint, {caller} by the dashboard's hop: {status}"
                if gateway_expected(policy, caller) == "ok":
                    assert status == 200 and b"GET / HTTP/1.1" in body and b"peergrid_endpoint" not in body, where
                else:
                    assert status == 403 and b"GET / HTTP/1.1" not in body, where
    finally:
        tunnel.stop()
        target.close()
        loop.run(gateway.stop())
        loop.stop()
