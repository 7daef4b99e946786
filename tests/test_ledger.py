"""The ledger: escrow at submit, per-second settlement with fees, payouts, and books that balance."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from scheduler import ledger
from scheduler.attempts import claim_attempt, finish_attempt, start_attempt
from scheduler.core import Core
from scheduler.models import Account, AccountKind, Attempt, Job, LedgerTransaction, Node, User
from scheduler.nodes import NodeReport, register
from scheduler.settings import Settings
from scheduler.states import utcnow
from tests import factories
from tests.factories import bearer, hello_world

M = ledger.MICRO
CPU_PRICE = 100  # µcr per core-second, the seeded cpu market
HOUR = 3600


def balance(client, token) -> dict:
    return client.get("/api/v1/ledger/balance", headers=bearer(token)).json


def submit(client, token, doc=None):
    return client.post("/api/v1/jobs", json=doc or hello_world("busybox"), headers=bearer(token))


def run_attempt(core, node_id, job_id, *, seconds: float, exit_code: int = 0) -> Attempt:
    """Given a node, run the job's queued attempt for exactly `seconds` as the server sees it."""
    start = utcnow()
    with core.transaction() as session:
        node = session.get(Node, node_id)
        attempt = session.scalars(
            select(Attempt).join(Attempt.op).where(Attempt.state == "queued").where(Attempt.op.has(job_id=job_id))
        ).first()
        claim_attempt(session, node, attempt.id, now=start)
        start_attempt(session, node, attempt.id, now=start)
        finish_attempt(session, node, attempt.id, exit_code=exit_code, now=start + timedelta(seconds=seconds))
        return attempt


def provider_node(core) -> tuple[int, int, str]:
    node_id, _, provider_token = factories.node(core)
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(slots=4))
        owner_id = node.owner_id
    return node_id, owner_id, provider_token


def test_submitting_escrows_the_most_the_job_can_cost(client, core):
    _, token = factories.user(core, credits=10)
    response = submit(client, token)
    assert response.status_code == 201
    assert response.json["max_cost"] == CPU_PRICE * HOUR
    assert balance(client, token) == {"available": 10 * M - CPU_PRICE * HOUR, "escrow": CPU_PRICE * HOUR,
                                      "earnings": 0, "payout_pending": 0}


def test_a_job_beyond_the_balance_is_refused_with_the_shortfall_and_nothing_stored(client, core):
    _, token = factories.user(core, credits=0)
    with core.transaction() as session:
        ledger.grant(session, session.scalar(select(User).order_by(User.id.desc())), 100_000)

    response = submit(client, token)

    assert response.status_code == 402
    assert response.json["shortfall"] == CPU_PRICE * HOUR - 100_000
    assert "short by 0.26" in response.json["error"]
    assert client.get("/api/v1/jobs", headers=bearer(token)).json["total"] == 0
    assert balance(client, token)["available"] == 100_000


def test_a_finished_attempt_is_billed_by_the_second_with_the_fee_and_the_rest_returned(client, core):
    _, token = factories.user(core, credits=10)
    node_id, provider_id, provider_token = provider_node(core)
    job_id = submit(client, token).json["id"]

    attempt = run_attempt(core, node_id, job_id, seconds=12.5)

    cost = int(12.5 * CPU_PRICE)  # 12.5 s × 1 core × 100 µcr/s
    fee = cost * 100_000 // M  # the cpu market's 10%
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    assert job["state"] == "succeeded" and job["cost"] == cost and job["reserved"] == 0
    note = job["ops"][0]["attempts"][0]["cost_note"]
    assert "12.500 s × 1 core × 100 µcr/s = 1250 µcr" in note and "fee 10% = 125 µcr" in note
    assert balance(client, token) == {"available": 10 * M - cost, "escrow": 0, "earnings": 0, "payout_pending": 0}
    assert balance(client, provider_token)["earnings"] == cost - fee
    with core.sessions() as session:
        books = ledger.check_books(session)
        assert books.balanced, books.problems
        assert books.totals["fees"] == fee
        assert attempt.id


def test_settling_twice_charges_once(client, core):
    _, token = factories.user(core)
    node_id, _, provider_token = provider_node(core)
    job_id = submit(client, token).json["id"]
    attempt = run_attempt(core, node_id, job_id, seconds=10)
    with core.transaction() as session:
        assert ledger.bill_attempt(session, session.get(Attempt, attempt.id)) == 0
    assert balance(client, provider_token)["earnings"] == 900


def test_gpu_attempts_are_billed_per_gpu(client, core):
    _, token = factories.user(core)
    node_id, node_token, _ = factories.node(core)
    gpus = [{"uuid": f"GPU-{i}", "name": "NVIDIA A100-SXM4-80GB", "memory_total_mb": 81920, "index": i} for i in range(2)]
    client.post("/api/v1/node/register", json={"gpus": gpus, "simulated": True}, headers=bearer(node_token))
    doc = hello_world("busybox")
    doc["ops"][0]["args"].update(gpu_count=2, timeout=600)
    job_id = submit(client, token, doc).json["id"]
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    assert job["max_cost"] == 2 * 200 * 600  # GPUs × the gpu-2x price × timeout × one try
    attempt_id = job["ops"][0]["attempts"][0]["id"]
    start = utcnow()
    with core.transaction() as session:
        node = session.get(Node, node_id)
        claim_attempt(session, node, attempt_id, gpus=["GPU-0", "GPU-1"], now=start)
        start_attempt(session, node, attempt_id, now=start)
        finish_attempt(session, node, attempt_id, exit_code=0, now=start + timedelta(seconds=3))
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    assert job["cost"] == 3 * 2 * 200


def test_a_run_past_its_limit_is_billed_only_to_the_limit(client, core):
    _, token = factories.user(core)
    node_id, _, _ = provider_node(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["timeout"] = 5
    job_id = submit(client, token, doc).json["id"]
    run_attempt(core, node_id, job_id, seconds=60)
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["cost"] == 5 * CPU_PRICE


def test_lost_attempts_are_not_billed_and_cancelling_settles_the_time_used(client, core):
    from scheduler.nodes import reap_silent_nodes

    _, token = factories.user(core, credits=10)
    node_id, _, provider_token = provider_node(core)
    job_id = submit(client, token).json["id"]
    start = utcnow()
    with core.transaction() as session:
        node = session.get(Node, node_id)
        attempt = session.scalars(select(Attempt)).first()
        claim_attempt(session, node, attempt.id, now=start)
        start_attempt(session, node, attempt.id, now=start)
        reap_silent_nodes(session, timeout_s=30, now=utcnow() + timedelta(seconds=60))
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    lost = job["ops"][0]["attempts"][0]
    assert lost["state"] == "lost" and lost["cost"] == 0 and lost["cost_note"] == "Not billed: lost with its node."

    second_node, _, _ = provider_node(core)
    with core.transaction() as session:
        node = session.get(Node, second_node)
        again = session.scalars(select(Attempt).where(Attempt.state == "queued")).first()
        claim_attempt(session, node, again.id, now=start)
        start_attempt(session, node, again.id, now=start)
        job_row = session.get(Job, job_id)
        from scheduler.orchestration import cancel_job

        cancel_job(session, job_row, now=start + timedelta(seconds=7))
    job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    assert job["state"] == "cancelled" and job["cost"] == 7 * CPU_PRICE and job["reserved"] == 0
    assert balance(client, token) == {"available": 10 * M - 7 * CPU_PRICE, "escrow": 0, "earnings": 0, "payout_pending": 0}
    assert balance(client, provider_token)["earnings"] == 0  # the lost node's owner earns nothing


def test_extending_escrows_the_difference_or_says_what_is_missing(client, core):
    _, token = factories.user(core, credits=1)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["timeout"] = 600
    job_id = submit(client, token, doc).json["id"]
    assert balance(client, token)["escrow"] == 600 * CPU_PRICE

    assert client.post(f"/api/v1/jobs/{job_id}/extend", json={"seconds": 600}, headers=bearer(token)).status_code == 200
    assert balance(client, token)["escrow"] == 1200 * CPU_PRICE
    too_far = client.post(f"/api/v1/jobs/{job_id}/extend", json={"seconds": 100_000}, headers=bearer(token))
    assert too_far.status_code == 402 and too_far.json["shortfall"] > 0
    assert balance(client, token)["escrow"] == 1200 * CPU_PRICE


def test_payouts_are_requested_then_approved_or_rejected_by_an_admin(client, core):
    _, token = factories.user(core, credits=100)
    node_id, provider_id, provider_token = provider_node(core)
    _, admin = factories.user(core, admin=True)
    job_id = submit(client, token).json["id"]
    run_attempt(core, node_id, job_id, seconds=3000)  # 0.3 credits, 0.27 to the provider
    earned = balance(client, provider_token)["earnings"]
    assert earned == 270_000

    small = client.post("/api/v1/payouts", json={"amount": 1}, headers=bearer(provider_token))
    assert small.status_code == 400 and "at least 1 credits" in small.json["error"]
    object.__setattr__(core.settings, "min_payout", 100_000)
    greedy = client.post("/api/v1/payouts", json={"amount": earned + 1}, headers=bearer(provider_token))
    assert greedy.status_code == 402
    first = client.post("/api/v1/payouts", json={"amount": 150_000}, headers=bearer(provider_token)).json
    second = client.post("/api/v1/payouts", json={"amount": 120_000}, headers=bearer(provider_token)).json
    assert balance(client, provider_token) | {"available": 0} == {"available": 0, "escrow": 0, "earnings": 0, "payout_pending": 270_000}

    assert client.post(f"/api/v1/admin/payouts/{first['id']}/approve", json={"reference": "x"}, headers=bearer(token)).status_code == 403
    assert client.post(f"/api/v1/admin/payouts/{first['id']}/approve", json={}, headers=bearer(admin)).status_code == 400
    approved = client.post(f"/api/v1/admin/payouts/{first['id']}/approve", json={"reference": "SEPA-2026-001"},
                           headers=bearer(admin)).json
    rejected = client.post(f"/api/v1/admin/payouts/{second['id']}/reject", json={"reason": "Bank details missing."},
                           headers=bearer(admin)).json
    assert approved["state"] == "approved" and approved["reference"] == "SEPA-2026-001" and approved["decided_at"]
    assert rejected["state"] == "rejected" and rejected["reason"] == "Bank details missing."
    again = client.post(f"/api/v1/admin/payouts/{first['id']}/reject", json={"reason": "oops"}, headers=bearer(admin))
    assert again.status_code == 409
    assert balance(client, provider_token) | {"available": 0} == {"available": 0, "escrow": 0, "earnings": 120_000, "payout_pending": 0}
    mine = client.get("/api/v1/payouts", headers=bearer(provider_token)).json["payouts"]
    assert [(p["id"], p["state"]) for p in mine] == [(second["id"], "rejected"), (first["id"], "approved")]

    filtered = client.get("/api/v1/admin/payouts?state=approved", headers=bearer(admin)).json["payouts"]
    assert [p["id"] for p in filtered] == [first["id"]]
    exported = client.get("/api/v1/admin/payouts.csv", headers=bearer(admin))
    assert exported.mimetype == "text/csv" and "SEPA-2026-001" in exported.get_data(as_text=True)
    ledger_csv = client.get("/api/v1/admin/ledger.csv", headers=bearer(admin)).get_data(as_text=True)
    assert ledger_csv.splitlines()[0].startswith("transaction,time,kind,key,account")
    assert f"payout:approve:{first['id']}" in ledger_csv
    books = client.get("/api/v1/admin/books", headers=bearer(admin)).json
    assert books["balanced"] and books["totals"]["paid_out"] == 150_000
    assert client.get("/api/v1/admin/books", headers=bearer(token)).status_code == 403


def test_grants_need_an_admin_and_can_be_retried_safely(client, core):
    _, admin = factories.user(core, admin=True)
    factories.user(core, email="bob@example.com", credits=0)
    body = {"email": "bob@example.com", "amount": 5 * M, "memo": "welcome"}
    headers = {**bearer(admin), "Idempotency-Key": "grant-bob-1"}
    assert client.post("/api/v1/admin/grants", json=body, headers=headers).status_code == 201
    retry = client.post("/api/v1/admin/grants", json=body, headers=headers)
    assert retry.json["balance"]["available"] == 5 * M
    _, user = factories.user(core)
    assert client.post("/api/v1/admin/grants", json=body, headers=bearer(user)).status_code == 403
    assert client.post("/api/v1/admin/grants", json={**body, "amount": -1}, headers=bearer(admin)).status_code == 400


def test_the_books_find_a_tampered_balance(core):
    factories.user(core, credits=5)
    with core.transaction() as session:
        assert ledger.check_books(session).balanced
        session.execute(update(Account).where(Account.kind == AccountKind.AVAILABLE).values(balance=Account.balance + 1))
    with core.sessions() as session:
        books = ledger.check_books(session)
    assert not books.balanced
    assert any("caches" in p and "postings sum to" in p for p in books.problems)


def test_the_store_refuses_a_negative_user_balance(database_url, tmp_path):
    core = Core.from_settings(Settings.from_env(
        {"PEERGRID_DATABASE_URL": database_url, "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.sqlite",
         "PEERGRID_SECRET_KEY": "x"}, data_dir=tmp_path))
    try:
        factories.user(core, credits=1)
        with pytest.raises(IntegrityError):
            with core.transaction() as session:
                session.execute(text("UPDATE accounts SET balance = -1 WHERE kind = 'available'"))
        with core.transaction() as session:  # the platform's issuance account is negative by design
            session.execute(text("UPDATE accounts SET balance = balance WHERE kind = 'issuance'"))
    finally:
        core.close()


def test_a_movement_is_undone_when_its_transaction_rolls_back(store_core):
    # Given: a person without an account yet, so the grant's first write opens a savepoint.
    user_id, _ = factories.user(store_core, credits=0)

    # When: a grant is the first write of a transaction that then rolls back.
    with store_core.sessions() as session:
        ledger.grant(session, session.get(User, user_id), 5 * M, key="grant:undone")
        session.rollback()

    # Then: neither the grant nor the account it made is kept.
    with store_core.sessions() as session:
        assert session.scalar(select(LedgerTransaction.id).where(LedgerTransaction.key == "grant:undone")) is None
        assert session.scalar(select(Account.id).where(Account.user_id == user_id)) is None




def _together(n: int, work) -> list:
    """Run work(i) in n threads released at the same moment; return what each returned or raised."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            out[i] = work(i)
        except Exception as e:  # collected for the assertions
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_one_attempt_settled_by_many_concurrent_callers_is_charged_once(store_core):
    core = store_core
    _, token = factories.user(core, credits=10)
    from web import create_app

    client = create_app(core=core).test_client()
    node_id, _, provider_token = provider_node(core)
    job_id = submit(client, token).json["id"]
    start = utcnow()
    with core.transaction() as session:
        node = session.get(Node, node_id)
        attempt_id = session.scalars(select(Attempt.id)).first()
        claim_attempt(session, node, attempt_id, now=start)
        start_attempt(session, node, attempt_id, now=start)

    def settle(_):
        with core.transaction() as session:
            attempt = session.get(Attempt, attempt_id)
            return ledger.bill_attempt(session, attempt, end=start + timedelta(seconds=20))

    results = _together(8, settle)

    assert sorted(r for r in results if not isinstance(r, Exception)) == [0] * 7 + [2000], results
    assert balance(client, provider_token)["earnings"] == 1800
    with core.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM ledger_transactions WHERE key LIKE 'settle:%'")) == 1
        assert ledger.check_books(session).balanced


def test_concurrent_submits_beyond_the_balance_never_overdraw(store_core):
    from scheduler.jobs import submit_job

    core = store_core
    user_id, token = factories.user(core, credits=0)
    with core.transaction() as session:
        ledger.grant(session, session.get(User, user_id), 3 * CPU_PRICE * HOUR)  # exactly three jobs

    def attempt_submit(_):
        with core.transaction() as session:
            job = submit_job(session, session.get(User, user_id), hello_world("busybox"), default_timeout_s=HOUR)
            return job.id

    results = _together(10, attempt_submit)

    accepted = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, ledger.InsufficientCredits)]
    assert len(accepted) == 3 and len(refused) == 7, results
    with core.sessions() as session:
        assert ledger.balances(session, user_id) == {"available": 0, "escrow": 3 * CPU_PRICE * HOUR,
                                                     "earnings": 0, "payout_pending": 0}
        assert session.scalar(text("SELECT count(*) FROM jobs")) == 3
        assert ledger.check_books(session).balanced
