"""Following each credit of a real job: from an admin's grant to the provider's payout."""

from __future__ import annotations

import pytest

from scheduler import ledger
from tests import factories
from tests.factories import hello_world
from tests.stack import Api, Stack


@pytest.fixture
def stack(tmp_path, sqlite_url, test_image):
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
                  extra_env={"PEERGRID_MIN_PAYOUT": "0.0001"}) as stack:
        stack.start_web()
        stack.start_scheduler()
        yield stack


def test_a_credit_from_grant_to_payout(stack, test_image):
    _, admin_token = factories.user(stack.core, admin=True, credits=0)
    _, user_token = factories.user(stack.core, email="submitter@example.com", credits=0)
    node_id, node_token, provider_token = factories.node(stack.core, name="earner")
    stack.start_worker(node_token, name="earner")
    admin, user, provider = (Api(stack.url, t) for t in (admin_token, user_token, provider_token))
    before_provider = provider.get("/ledger/balance")

    # Given 5 credits granted by an admin,
    assert admin.post("/admin/grants", {"email": "submitter@example.com", "amount": 5_000_000, "memo": "e2e"}).status_code == 201
    # when a job runs on the provider's node,
    doc = hello_world(test_image, cmd="sleep 2; echo paid work")
    doc["ops"][0]["args"]["timeout"] = 60
    job_id = user.post("/jobs", doc).json()["id"]
    job = user.wait(job_id, timeout=60)

    # then the user paid for the seconds the server saw, and got the rest of the reservation back,
    attempt = job["ops"][0]["attempts"][0]
    assert job["state"] == "succeeded" and job["reserved"] == 0
    assert job["cost"] == attempt["cost"] > 0
    seconds = float(attempt["cost_note"].split(" s ×")[0])
    assert 2.0 <= seconds < 10 and job["cost"] == int(seconds * 1000) * 100 // 1000
    assert user.get("/ledger/balance") == {"available": 5_000_000 - job["cost"], "escrow": 0, "earnings": 0, "payout_pending": 0}
    fee = job["cost"] * 100_000 // 1_000_000
    earned = provider.get("/ledger/balance")["earnings"] - before_provider["earnings"]
    assert earned == job["cost"] - fee

    # and the provider's payout, once approved, leaves the system with the books balanced.
    payout = provider.post("/payouts", {"amount": earned}).json()
    assert admin.post(f"/admin/payouts/{payout['id']}/approve", {"reference": "E2E-1"}).status_code == 200
    books = admin.get("/admin/books")
    assert books["balanced"], books["problems"]
    assert books["totals"]["fees"] == fee and books["totals"]["paid_out"] == earned
    assert books["totals"]["issued"] == 5_000_000 + 1000 * ledger.MICRO  # the grant, and the provider's test credits

    trail = admin.get("/admin/ledger", job=job_id)["movements"]
    kinds = sorted({m["kind"] for m in trail})
    assert kinds == ["escrow", "release", "settle"]
    settle = [m for m in trail if m["kind"] == "settle"]
    assert sorted(m["amount"] for m in settle) == sorted([-job["cost"], fee, job["cost"] - fee])
