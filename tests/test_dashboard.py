"""The first dashboard pages: sign in, the jobs list, a job with its logs."""

from __future__ import annotations

import re

from sqlalchemy import select

from protocol.messages import LogRecord
from scheduler.attempts import LogLimits, append_logs, claim_attempt, finish_attempt, start_attempt
from scheduler.models import Attempt, JoinToken, Node
from scheduler.nodes import NodeReport, register
from tests import factories
from tests.factories import PASSWORD, bearer, hello_world


def csrf(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def sign_in(client, email: str, password: str = PASSWORD):
    token = csrf(client.get("/login"))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def test_pages_need_a_sign_in(client):
    response = client.get("/jobs")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_sign_in_page_has_the_promised_fields(client):
    page = client.get("/login").get_data(as_text=True)
    assert 'type="email"' in page and 'type="password"' in page and 'type="submit"' in page


def test_a_wrong_password_says_so_without_saying_which_part(client, core):
    factories.user(core, email="ann@example.com")
    response = sign_in(client, "ann@example.com", "wrong password")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)


def test_a_form_without_its_csrf_token_is_refused(client, core):
    factories.user(core, email="ann@example.com")
    response = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
    assert response.status_code == 400


def test_a_signed_in_user_sees_their_jobs_and_a_jobs_logs(client, core):
    _, token = factories.user(core, email="ann@example.com")
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport())
        attempt = session.query(Attempt).one()
        claim_attempt(session, node, attempt.id)
        start_attempt(session, node, attempt.id)
        append_logs(session, node, attempt.id, [LogRecord(1, "stdout", "hello <world>")], limits=LogLimits(max_line_chars=100, max_bytes=10_000))
        finish_attempt(session, node, attempt.id, exit_code=0)

    response = sign_in(client, "ann@example.com")
    assert response.status_code == 302
    listing = client.get("/jobs").get_data(as_text=True)
    assert f"#{job_id}" in listing and "state-succeeded" in listing
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "hello &lt;world&gt;" in page  # escaped, never raw HTML
    assert "hello-world" in page and "succeeded" in page
    # The page's script follows the logs through the API, with the session cookie.
    assert client.get(f"/api/v1/jobs/{job_id}/logs").json["lines"][0]["text"] == "hello <world>"


def test_someone_elses_job_is_a_not_found_page(client, core):
    _, token = factories.user(core)
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    factories.user(core, email="bob@example.com")
    sign_in(client, "bob@example.com")
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert "There is no job" in response.get_data(as_text=True)


def test_sign_out(client, core):
    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")
    page = client.get("/jobs")
    client.post("/logout", data={"csrf_token": csrf(page)})
    assert client.get("/jobs").status_code == 302


def test_the_session_cookie_does_not_authorise_writes(client, core):
    _, token = factories.user(core, email="ann@example.com")
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    sign_in(client, "ann@example.com")
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 401


def test_login_only_redirects_within_the_site(client, core):
    factories.user(core, email="ann@example.com")
    token = csrf(client.get("/login"))
    response = client.post(
        "/login?next=//evil.example/x", data={"email": "ann@example.com", "password": PASSWORD, "csrf_token": token}
    )
    assert response.headers["Location"] == "/jobs"


def test_the_job_page_shows_what_happened_and_can_extend_and_cancel(client, core):
    _, token = factories.user(core, email="ann@example.com")
    job_id = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    sign_in(client, "ann@example.com")
    page = client.get(f"/jobs/{job_id}")
    text = page.get_data(as_text=True)
    assert "What happened" in text and "Submitted with 1 op(s); 0.36 credits reserved" in text and "offered on market cpu" in text

    extended = client.post(f"/jobs/{job_id}/extend", data={"minutes": "5", "csrf_token": csrf(page)})
    assert extended.status_code == 302
    assert "Time limits extended by 300 s." in client.get(f"/jobs/{job_id}").get_data(as_text=True)

    cancelled = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf(page)})
    assert cancelled.status_code == 302
    after = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Cancelled by its owner." in after and "Cancel job" not in after
    assert client.post(f"/jobs/{job_id}/cancel", data={}).status_code == 400  # no CSRF token


def test_the_nodes_page_shows_gpus_marked_simulated_and_can_drain(client, core):
    node_id, node_token, owner_token = factories.node(core, owner_email="prov@example.com")
    report = {"hostname": "rig", "cpu_count": 8, "memory_mb": 32768, "simulated": True, "gpus": [
        {"uuid": "GPU-SIM-1", "name": "NVIDIA GeForce RTX 4090", "memory_total_mb": 24576, "memory_free_mb": 24576,
         "utilization_pct": 0, "index": 0}]}
    client.post("/api/v1/node/register", json=report, headers=bearer(node_token))
    sign_in(client, "prov@example.com")

    page = client.get("/nodes")
    text = page.get_data(as_text=True)
    assert "NVIDIA GeForce RTX 4090" in text and "simulated GPUs" in text and "state-online" in text
    assert "24.6 GB" in text  # GPU memory in the unit requirements use: 1000 MB to the GB
    client.post(f"/nodes/{node_id}/drain", data={"drain": "1", "csrf_token": csrf(page)})
    assert "state-draining" in client.get("/nodes").get_data(as_text=True)
    factories.user(core, email="other@example.com")
    client.post("/logout", data={"csrf_token": csrf(page)})
    sign_in(client, "other@example.com")
    assert "RTX 4090" not in client.get("/nodes").get_data(as_text=True)
    assert client.post(f"/nodes/{node_id}/drain", data={"csrf_token": csrf(client.get("/nodes"))}).status_code == 404


def test_credits_payouts_grants_and_the_books_through_the_pages(client, core):
    from scheduler import ledger
    from scheduler.models import User
    from sqlalchemy import select

    _, admin_token = factories.user(core, email="boss@example.com", admin=True)
    provider_id, _ = factories.user(core, email="prov@example.com", credits=0)
    with core.transaction() as session:  # the provider earned 3 credits
        prov = session.get(User, provider_id)
        earnings = ledger.account(session, ledger.K.EARNINGS, prov.id)
        ledger.post(session, "test:earned", "settle", [(ledger.account(session, ledger.K.ISSUANCE), -3 * ledger.MICRO), (earnings, 3 * ledger.MICRO)])

    sign_in(client, "prov@example.com")
    page = client.get("/credits")
    assert "Earned as a provider" in page.get_data(as_text=True)
    client.post("/credits/payout", data={"credits": "2", "csrf_token": csrf(page)})
    after = client.get("/credits").get_data(as_text=True)
    assert "Payout of 2 credits requested" in after and "state-requested" in after
    assert client.get("/admin/payouts").status_code == 403
    client.post("/logout", data={"csrf_token": csrf(page)})

    sign_in(client, "boss@example.com")
    queue = client.get("/admin/payouts")
    assert "prov@example.com" in queue.get_data(as_text=True)
    with core.sessions() as session:
        payout_id = session.scalar(select(ledger.Payout.id))
    client.post(f"/admin/payouts/{payout_id}/decide", data={"decision": "approve", "reference": "", "csrf_token": csrf(queue)})
    assert "needs the external payment" in client.get("/admin/payouts").get_data(as_text=True)
    client.post(f"/admin/payouts/{payout_id}/decide", data={"decision": "approve", "reference": "WIRE-7", "csrf_token": csrf(queue)})
    assert "WIRE-7" in client.get("/admin/payouts?state=approved").get_data(as_text=True)

    users = client.get("/admin/users")
    client.post(f"/admin/users/{provider_id}/grant", data={"credits": "1.5", "memo": "bonus", "once": "abc", "csrf_token": csrf(users)})
    client.post(f"/admin/users/{provider_id}/grant", data={"credits": "1.5", "memo": "bonus", "once": "abc", "csrf_token": csrf(users)})
    with core.sessions() as session:
        assert ledger.balances(session, provider_id)["available"] == 1_500_000  # a resent form grants once
    ledger_page = client.get("/admin/ledger").get_data(as_text=True)
    assert "The books balance." in ledger_page and "payout_paid" in ledger_page


def test_signup_creates_an_account_with_starter_credits_and_tokens_can_be_made_and_revoked(client, core):
    page = client.get("/signup")
    mismatch = client.post("/signup", data={"email": "new@example.com", "password": "long enough", "confirm": "other",
                                            "csrf_token": csrf(page)})
    assert mismatch.status_code == 400 and "differ" in mismatch.get_data(as_text=True)
    made = client.post("/signup", data={"email": "new@example.com", "password": "long enough", "confirm": "long enough",
                                        "csrf_token": csrf(page)})
    assert made.status_code == 302
    overview = client.get("/").get_data(as_text=True)
    assert "Welcome to peergrid" in overview and ">100<" in overview.replace("</strong>", "<")

    account = client.get("/account")
    created = client.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf(account)})
    token = re.search(r'id="new-token">(pg_[^<]+)<', created.get_data(as_text=True)).group(1)
    assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
    listing = client.get("/account").get_data(as_text=True)
    assert token not in listing  # shown once only
    token_id = re.search(r'/account/tokens/(\d+)/revoke', listing).group(1)
    client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf(account)})
    assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 401


def test_the_submit_page_checks_and_submits_without_javascript_too(client, core):
    import json

    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")
    page = client.get("/submit?template=workflow-three-steps")
    assert "Three-step workflow" in page.get_data(as_text=True)
    check = client.post("/submit/check", json={"definition": "{\"ops\": 3}"}, headers={"X-CSRF-Token": csrf(page)})
    assert check.json["valid"] is False and check.json["errors"][0]["path"] == "$.version"
    good = client.post("/submit/check", json={"definition": json.dumps(hello_world("busybox"))}, headers={"X-CSRF-Token": csrf(page)})
    assert good.json["valid"] and good.json["max_cost"] == 360_000 and good.json["affordable"]
    assert client.post("/submit/check", json={"definition": "{}"}).status_code == 400  # no CSRF header
    bad = client.post("/submit", data={"definition": "{\"version\": \"0.1\", \"ops\": []}", "csrf_token": csrf(page)})
    assert bad.status_code == 422 and "The job has no ops" in bad.get_data(as_text=True)
    posted = client.post("/submit", data={"definition": json.dumps(hello_world("busybox")), "csrf_token": csrf(page)})
    assert posted.status_code == 302 and re.search(r"/jobs/\d+$", posted.headers["Location"])


def test_admins_edit_markets_and_ban_nodes_from_the_pages(client, core):
    node_id, node_token, _ = factories.node(core)
    client.post("/api/v1/node/register", json={}, headers=bearer(node_token))
    factories.user(core, email="boss@example.com", admin=True)
    sign_in(client, "boss@example.com")
    page = client.get("/admin/markets")
    client.post("/admin/markets", data={"slug": "l4", "name": "L4", "gpu_count": "1", "min_vram_gb": "22",
                                        "price_per_second": "150", "fee_percent": "5", "csrf_token": csrf(page)})
    client.post("/admin/markets/l4", data={"price_per_second": "175", "csrf_token": csrf(page)})
    listing = client.get("/admin/markets").get_data(as_text=True)
    assert 'id="market-l4"' in listing and 'value="175"' in listing
    client.post("/admin/markets", data={"slug": "Bad Slug", "csrf_token": csrf(page)})
    assert "lowercase letters" in client.get("/admin/markets").get_data(as_text=True)

    nodes = client.get("/nodes")
    client.post(f"/admin/nodes/{node_id}/ban", data={"ban": "1", "reason": "crypto mining", "csrf_token": csrf(nodes)})
    assert "banned: crypto mining" in client.get("/nodes").get_data(as_text=True)
    refused = client.post("/api/v1/node/heartbeat", json={}, headers=bearer(node_token))
    assert refused.status_code == 403 and "banned" in refused.json["error"]
    client.post(f"/admin/nodes/{node_id}/ban", data={"ban": "0", "csrf_token": csrf(nodes)})
    assert client.post("/api/v1/node/heartbeat", json={}, headers=bearer(node_token)).status_code == 200


def test_providers_register_nodes_on_the_page_and_remove_them(client, core):
    factories.user(core, email="prov@example.com")
    sign_in(client, "prov@example.com")
    page = client.get("/nodes")
    shown = client.post("/nodes", data={"name": "rig-9", "csrf_token": csrf(page)}).get_data(as_text=True)
    command = re.search(r'id="worker-command">([^<]+)<', shown).group(1)
    # The token goes in the environment: in argv, `ps` would show it to every user of the machine.
    token = re.fullmatch(r"PEERGRID_NODE_TOKEN=(pgn_\S+) peergrid worker --server http://localhost", command).group(1)
    assert "--token" not in shown
    assert client.post("/api/v1/node/register", json={}, headers=bearer(token)).status_code == 200
    node_id = re.search(r'/nodes/(\d+)/remove', client.get("/nodes").get_data(as_text=True)).group(1)
    client.post(f"/nodes/{node_id}/remove", data={"csrf_token": csrf(page)})
    assert "rig-9" not in client.get("/nodes").get_data(as_text=True)
    assert client.post("/api/v1/node/register", json={}, headers=bearer(token)).status_code == 401


def test_sign_in_is_rate_limited(client, core):
    from web.dashboard import LOGIN_ATTEMPTS

    LOGIN_ATTEMPTS._tries.clear()
    factories.user(core, email="ann@example.com")
    for _ in range(10):
        assert sign_in(client, "ann@example.com", "wrong password").status_code == 401
    blocked = sign_in(client, "ann@example.com")  # even the right password waits
    assert blocked.status_code == 429 and "Too many sign-in attempts" in blocked.get_data(as_text=True)
    LOGIN_ATTEMPTS._tries.clear()
    assert sign_in(client, "ann@example.com").status_code == 302


def test_pages_and_api_answers_carry_security_headers(client):
    for response in (client.get("/login"), client.get("/api/v1/health")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "onsubmit=" not in client.get("/login").get_data(as_text=True)


def test_the_account_page_keeps_secrets_without_ever_showing_a_value(client, core):
    factories.user(core, email="ann@example.com")
    factories.user(core, email="bob@example.com")
    sign_in(client, "ann@example.com")
    token = csrf(client.get("/account"))

    stored = client.post("/account/secrets", data={"csrf_token": token, "name": "HF_TOKEN", "value": "hf-first-value"},
                         follow_redirects=True)
    replaced = client.post("/account/secrets", data={"csrf_token": token, "name": "HF_TOKEN", "value": "hf-second-value"},
                           follow_redirects=True)
    wrong = client.post("/account/secrets", data={"csrf_token": token, "name": "hf token", "value": "x"},
                        follow_redirects=True)

    assert "Secret HF_TOKEN stored" in stored.get_data(as_text=True)
    assert "Secret HF_TOKEN replaced" in replaced.get_data(as_text=True)
    assert "capital letters" in wrong.get_data(as_text=True)
    page = client.get("/account").get_data(as_text=True)
    assert "<code>HF_TOKEN</code>" in page
    assert "hf-first-value" not in page and "hf-second-value" not in page
    client.post("/logout", data={"csrf_token": token})
    sign_in(client, "bob@example.com")
    assert "<code>HF_TOKEN</code>" not in client.get("/account").get_data(as_text=True)
    assert client.post("/account/secrets/HF_TOKEN/delete", data={"csrf_token": csrf(client.get("/account"))}).status_code == 404
    client.post("/logout", data={"csrf_token": csrf(client.get("/account"))})
    sign_in(client, "ann@example.com")
    deleted = client.post("/account/secrets/HF_TOKEN/delete", data={"csrf_token": csrf(client.get("/account"))},
                          follow_redirects=True)
    assert "Secret HF_TOKEN deleted" in deleted.get_data(as_text=True)
    assert "No secrets yet" in deleted.get_data(as_text=True)


def _earned(core, user_id: int, amount: int) -> int:
    """Credit a provider's earnings with amount micro-credits; return the earnings account's id."""
    from scheduler import ledger

    with core.transaction() as session:
        earnings = ledger.account(session, ledger.K.EARNINGS, user_id)
        ledger.post(session, f"test:earned:{user_id}", "settle",
                    [(ledger.account(session, ledger.K.ISSUANCE), -amount), (earnings, amount)])
    return earnings.id


def test_a_payout_the_store_refuses_after_it_was_written_is_not_kept(database_url, tmp_path):
    from sqlalchemy import event, func, select, update

    from scheduler import ledger
    from scheduler.models import Account, Payout

    with factories.served(database_url, tmp_path) as (core, client):
        provider_id, _ = factories.user(core, email="prov@example.com", credits=0)
        earnings_id = _earned(core, provider_id, 3 * ledger.MICRO)
        sign_in(client, "prov@example.com")
        page = client.get("/credits")

        # Given: the earnings are there when the request checks them, and drained by the time its
        # posting reaches the store, after the payout row is written.
        def drain(session, _context):
            if any(isinstance(row, Payout) for row in session.new):
                session.connection().execute(update(Account).where(Account.id == earnings_id).values(balance=0))

        event.listen(core.sessions, "after_flush", drain)
        try:
            # When: the provider asks for a payout of 2 credits.
            response = client.post("/credits/payout", data={"credits": "2", "csrf_token": csrf(page)})
        finally:
            event.remove(core.sessions, "after_flush", drain)

        # Then: the refusal is shown, and neither the payout nor anything else of the request is kept.
        assert response.status_code == 302
        assert "This payout needs 2 credits" in client.get("/credits").get_data(as_text=True)
        with core.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Payout)) == 0
            assert ledger.balances(session, provider_id)["earnings"] == 3 * ledger.MICRO
            books = ledger.check_books(session)
            assert books.balanced, books.problems


def test_a_refused_payout_request_leaves_the_store_as_it_was(database_url, tmp_path):
    from sqlalchemy import func, select

    from scheduler.models import Account

    with factories.served(database_url, tmp_path) as (core, client):
        factories.user(core, email="prov@example.com", credits=0)
        sign_in(client, "prov@example.com")
        page = client.get("/credits")
        with core.sessions() as session:
            before = session.scalar(select(func.count()).select_from(Account))

        # A provider who never earned asks for a payout: the earnings account it looked up is not kept.
        response = client.post("/credits/payout", data={"credits": "1", "csrf_token": csrf(page)})

        assert response.status_code == 302
        assert "This payout needs 1 credits; 0 are available" in client.get("/credits").get_data(as_text=True)
        with core.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Account)) == before


def test_a_view_that_flashes_a_refusal_and_redirects_writes_nothing(app, client, core):
    from flask import flash, redirect

    from scheduler.accounts import create_user, find_user
    from web.db import db

    def writes_then_flashes(category: str):
        create_user(db(), f"{category}@example.com", PASSWORD)
        flash("What the view says.", category)
        return redirect("/")

    app.add_url_rule("/test/flash/<category>", "test_flash", writes_then_flashes, methods=["POST"])

    refused = client.post("/test/flash/error")
    done = client.post("/test/flash/ok")

    assert refused.status_code == done.status_code == 302
    with core.sessions() as session:
        assert find_user(session, "error@example.com") is None
        assert find_user(session, "ok@example.com") is not None


def test_an_admin_cannot_ban_a_removed_node(client, core):
    from scheduler.nodes import remove_node

    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        remove_node(session, session.get(Node, node_id))
    factories.user(core, email="boss@example.com", admin=True)
    sign_in(client, "boss@example.com")

    response = client.post(f"/admin/nodes/{node_id}/ban",
                           data={"ban": "1", "reason": "crypto mining", "csrf_token": csrf(client.get("/nodes"))})

    assert response.status_code == 404
    with core.sessions() as session:
        assert session.get(Node, node_id).banned_at is None


def test_the_editors_check_needs_the_sessions_csrf_token_in_its_header(client, core):
    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")  # signing in starts a session that holds no CSRF token yet
    body = {"definition": "{}"}

    assert client.post("/submit/check", json=body).status_code == 400
    assert client.post("/submit/check", json=body, headers={"X-CSRF-Token": ""}).status_code == 400
    token = csrf(client.get("/submit"))
    assert client.post("/submit/check", json=body, headers={"X-CSRF-Token": token[:-1] + "x"}).status_code == 400
    assert client.post("/submit/check", json=body, headers={"X-CSRF-Token": token}).status_code == 200


def test_a_csrf_token_that_is_not_ascii_is_refused_not_a_crash(client, core):
    factories.user(core, email="ann@example.com")
    refused = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD, "csrf_token": "é"})
    assert refused.status_code == 400
    sign_in(client, "ann@example.com")
    token = csrf(client.get("/submit"))
    assert client.post("/submit/check", json={}, headers={"X-CSRF-Token": token + "é"}).status_code == 400


def test_a_definition_nested_too_deep_to_read_is_a_problem_on_the_submit_page(client, core):
    factories.user(core, email="deep@example.com")
    sign_in(client, "deep@example.com")
    page = client.get("/submit")
    deep = "[" * 100_000 + "]" * 100_000

    check = client.post("/submit/check", json={"definition": deep}, headers={"X-CSRF-Token": csrf(page)})
    posted = client.post("/submit", data={"definition": deep, "csrf_token": csrf(page)})

    assert check.status_code == 200 and check.json["valid"] is False
    assert check.json["errors"][0]["path"] == "$" and "deeper" in check.json["errors"][0]["message"]
    assert posted.status_code == 422 and "deeper" in posted.get_data(as_text=True)


def test_providers_make_join_tokens_on_the_nodes_page_and_revoke_them(client, core):
    provider_id, _ = factories.user(core, email="prov@example.com")
    someone_else = factories.join_token(core)
    sign_in(client, "prov@example.com")
    page = client.get("/nodes")

    shown = client.post("/nodes/join-tokens", data={"name": "rack 3", "csrf_token": csrf(page)}).get_data(as_text=True)

    # The token is shown once, in a command that passes it in the environment
    command = re.search(r'id="join-command">([^<]+)<', shown).group(1)
    token = re.fullmatch(r"PEERGRID_JOIN_TOKEN=(pgj_\S+) peergrid worker --server http://localhost --name gpu-1",
                         command).group(1)
    assert client.post("/api/v1/nodes/join", json={"name": "gpu-1"}, headers=bearer(token)).status_code == 201
    listed = client.get("/nodes").get_data(as_text=True)
    row = re.search(r'<tr id="join-token-(\d+)">(.*?)</tr>', listed, re.S)
    assert "rack 3" in row.group(2) and '<td class="num">1</td>' in row.group(2) and token not in listed
    assert "gpu-1" in listed

    # Revoking needs the page's CSRF token, and only the owner's own tokens can be revoked
    token_id = row.group(1)
    assert client.post(f"/nodes/join-tokens/{token_id}/revoke").status_code == 400
    with core.transaction() as session:
        theirs = session.scalar(select(JoinToken.id).where(JoinToken.owner_id != provider_id))
    assert client.post(f"/nodes/join-tokens/{theirs}/revoke", data={"csrf_token": csrf(page)}).status_code == 404
    client.post(f"/nodes/join-tokens/{token_id}/revoke", data={"csrf_token": csrf(page)})
    assert "revoked" in client.get("/nodes").get_data(as_text=True)
    assert client.post("/api/v1/nodes/join", json={"name": "gpu-2"}, headers=bearer(token)).status_code == 401
    assert client.post("/api/v1/nodes/join", json={"name": "gpu-2"}, headers=bearer(someone_else)).status_code == 201
