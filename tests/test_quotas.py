"""Admins' quotas: a submit over the waiting quota is refused with the reason before any credit moves,
also when many come at once (SQLite and PostgreSQL); admins set them through the API, the command
line and the dashboard, and nobody else can."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from scheduler import ledger
from scheduler.models import Job, Market, User
from scheduler.quotas import running_gpu_limits, set_quota
from tests import factories
from tests.factories import bearer, hello_world
from tests.test_dashboard import csrf, sign_in

CPU_JOB = 100 * 3600  # what one hello-world job reserves: the cpu market's price for its whole hour


def submit(client, token, key=None, **params):
    headers = bearer(token) if key is None else {**bearer(token), "Idempotency-Key": key}
    return client.post("/api/v1/jobs", json=hello_world("busybox"), headers=headers, query_string=params)


def jobs_of(core, user_id) -> int:
    with core.sessions() as session:
        return session.scalar(select(func.count(Job.id)).where(Job.owner_id == user_id))


def balances(core, user_id) -> dict:
    with core.sessions() as session:
        return ledger.balances(session, user_id)


def put_quota(client, admin, who, **body):
    return client.put(f"/api/v1/admin/users/{who}/quota", json=body, headers=bearer(admin))


def test_a_submit_over_the_waiting_quota_is_refused_with_the_reason_and_moves_no_credit(client, core):
    user_id, token = factories.user(core, email="ann@example.com", credits=10)
    _, admin = factories.user(core, admin=True)
    set_ = put_quota(client, admin, "ann@example.com", market=None, max_waiting_jobs=2)
    assert set_.status_code == 200, set_.json
    assert set_.json["quotas"] == [{"user": "ann@example.com", "user_id": user_id, "market": None,
                                    "max_running_gpus": None, "max_waiting_jobs": 2,
                                    "updated_at": set_.json["quotas"][0]["updated_at"]}]
    first, second = submit(client, token), submit(client, token)
    assert first.status_code == second.status_code == 201
    before = balances(core, user_id)

    refused = submit(client, token)

    assert refused.status_code == 429
    assert refused.json["error"] == (
        "Your quota allows 2 waiting jobs across all markets and 2 wait now; wait for some to start or ask an admin."
    )
    assert refused.json["quota"] == {"market": None, "max_waiting_jobs": 2} and refused.json["waiting"] == 2
    assert balances(core, user_id) == before and jobs_of(core, user_id) == 2
    # Once one no longer waits, there is room again.
    assert client.post(f"/api/v1/jobs/{first.json['id']}/cancel", headers=bearer(token)).status_code == 200
    assert submit(client, token).status_code == 201
    assert submit(client, token).status_code == 429


def test_a_quota_on_one_market_counts_only_jobs_there(client, core):
    user_id, token = factories.user(core, email="bob@example.com", credits=10)
    _, admin = factories.user(core, admin=True)
    assert put_quota(client, admin, user_id, market="gpu-24gb", max_waiting_jobs=0).status_code == 200
    assert put_quota(client, admin, user_id, market="cpu", max_waiting_jobs=1, max_running_gpus=2).status_code == 200

    assert submit(client, token).status_code == 201  # a cpu job: the gpu-24gb quota does not apply
    refused = submit(client, token)

    assert refused.status_code == 429 and refused.json["error"] == (
        "Your quota allows 1 waiting job on market cpu and 1 waits now; wait for some to start or ask an admin."
    )
    # validate says so too, before anything is posted
    plan = client.post("/api/v1/jobs/validate", json=hello_world("busybox"), headers=bearer(token))
    assert plan.json["valid"] is False and "Your quota allows 1 waiting job on market cpu" in plan.json["errors"][0]["message"]
    with core.sessions() as session:
        markets = dict(session.execute(select(Market.slug, Market.id)).all())
        assert running_gpu_limits(session) == {(user_id, markets["cpu"]): 2}


def test_a_repeat_of_a_submit_at_its_quota_answers_the_first_job(client, core):
    user_id, token = factories.user(core)
    _, admin = factories.user(core, admin=True)
    put_quota(client, admin, user_id, max_waiting_jobs=1)
    first = submit(client, token, key="only-once")

    again = submit(client, token, key="only-once")
    other = submit(client, token, key="another")

    assert first.status_code == 201 and again.status_code == 200 and again.json == first.json
    assert other.status_code == 429
    assert jobs_of(core, user_id) == 1


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency-keys"])
def test_concurrent_submits_hold_the_waiting_quota(database_url, tmp_path, keyed):
    with factories.served(database_url, tmp_path) as (core, _):
        from web import create_app

        user_id, token = factories.user(core, credits=100)
        with core.transaction() as session:
            set_quota(session, session.get(User, user_id), None, max_running_gpus=None, max_waiting_jobs=3)
        app = create_app(core=core)
        # A token used a moment ago is not written again, so the submits below do not queue on it.
        assert app.test_client().get("/api/v1/jobs", headers=bearer(token)).status_code == 200
        n = 10
        barrier = threading.Barrier(n)
        statuses: list = [None] * n

        def run(i):
            client = app.test_client()
            barrier.wait()
            statuses[i] = submit(client, token, key=f"key-{i}" if keyed else None).status_code

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

        assert sorted(statuses) == [201] * 3 + [429] * (n - 3), statuses
        assert jobs_of(core, user_id) == 3
        with core.sessions() as session:
            assert ledger.balances(session, user_id)["escrow"] == 3 * CPU_JOB
            assert ledger.check_books(session).balanced


def test_admins_set_list_and_remove_quotas_through_the_api(client, core):
    user_id, _ = factories.user(core, email="cat@example.com")
    _, admin = factories.user(core, admin=True)

    assert put_quota(client, admin, "cat@example.com", max_running_gpus=4, max_waiting_jobs=20).status_code == 200
    assert put_quota(client, admin, str(user_id), market="cpu", max_waiting_jobs=5).status_code == 200
    shown = client.get("/api/v1/admin/users/cat@example.com/quotas", headers=bearer(admin)).json
    every = client.get("/api/v1/admin/quotas", headers=bearer(admin)).json["quotas"]

    assert shown["user"]["email"] == "cat@example.com" and shown["max_priority"] is None and shown["priority_cap"] == 10
    assert [(q["market"], q["max_running_gpus"], q["max_waiting_jobs"]) for q in shown["quotas"]] == [
        (None, 4, 20), ("cpu", None, 5)]
    assert [q["user"] for q in every] == ["cat@example.com"] * 2
    # PUT replaces: a limit left out no longer applies
    assert put_quota(client, admin, user_id, max_waiting_jobs=7).json["quotas"][0]["max_running_gpus"] is None
    removed = client.delete("/api/v1/admin/users/cat@example.com/quota?market=cpu", headers=bearer(admin))
    assert removed.status_code == 200 and removed.json["removed"] is True
    assert [q["market"] for q in removed.json["quotas"]] == [None]
    # both limits lifted: no quota at all
    assert put_quota(client, admin, user_id, market=None).json["quotas"] == []


@pytest.mark.parametrize("body, status, words", [
    ({"max_waiting_jobs": -1}, 400, "max_waiting_jobs must be a whole number from 0"),
    ({"max_running_gpus": "4"}, 400, "max_running_gpus must be a whole number"),
    ({"max_waiting": 3}, 400, "Unknown field max_waiting"),
    ({"market": "no-such", "max_waiting_jobs": 3}, 404, "There is no market 'no-such'"),
    ({"market": 3}, 400, "market is a market's slug"),
])
def test_a_quota_that_cannot_be_kept_is_refused_with_a_sentence(client, core, body, status, words):
    user_id, _ = factories.user(core)
    _, admin = factories.user(core, admin=True)
    answer = put_quota(client, admin, user_id, **body)
    assert answer.status_code == status and words in answer.json["error"]


def test_only_admins_see_or_set_quotas_and_caps(client, core):
    user_id, token = factories.user(core)
    job_id = submit(client, token).json["id"]
    calls = [
        ("GET", "/api/v1/admin/quotas", None), ("GET", f"/api/v1/admin/users/{user_id}/quotas", None),
        ("PUT", f"/api/v1/admin/users/{user_id}/quota", {"max_waiting_jobs": 100}),
        ("DELETE", f"/api/v1/admin/users/{user_id}/quota", None),
        ("PUT", f"/api/v1/admin/users/{user_id}/max-priority", {"max_priority": 1000}),
        ("POST", f"/api/v1/admin/jobs/{job_id}/priority", {"priority": 1000}),
    ]
    for method, path, body in calls:
        answer = client.open(path, method=method, json=body, headers=bearer(token))
        assert answer.status_code == 403, (method, path, answer.status_code)
        assert client.open(path, method=method, json=body).status_code == 401
    with core.sessions() as session:
        assert session.get(User, user_id).max_priority is None
        assert session.get(Job, job_id).priority == 0
    assert client.get("/api/v1/admin/users/nobody@example.com/quotas",
                      headers=bearer(factories.user(core, admin=True)[1])).status_code == 404


def test_admins_set_quotas_on_the_command_line(core, settings):
    from cli import main

    factories.user(core, email="dee@example.com")
    env = {"PEERGRID_DATABASE_URL": settings.database_url, "PEERGRID_BROKER_URL": settings.broker_url,
           "PEERGRID_SECRET_KEY": "x", "PEERGRID_DATA_DIR": str(settings.data_dir)}
    runner = CliRunner()

    def peergrid(*args):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    made = peergrid("admin", "quota", "dee@example.com", "--running-gpus", "8", "--waiting-jobs", "50")
    assert made.exit_code == 0, made.output
    assert "Set dee@example.com's quota on every market." in made.output
    assert "every market: running GPUs 8, waiting jobs 50" in made.output
    kept = peergrid("admin", "quota", "dee@example.com", "--waiting-jobs", "none")  # the GPU limit stays
    assert "every market: running GPUs 8, waiting jobs no limit" in kept.output
    on_cpu = peergrid("admin", "quota", "dee@example.com", "--market", "cpu", "--waiting-jobs", "2")
    assert "cpu: running GPUs no limit, waiting jobs 2" in on_cpu.output
    cleared = peergrid("admin", "quota", "dee@example.com", "--clear")
    assert "Removed dee@example.com's quota on every market." in cleared.output
    shown = peergrid("admin", "quota", "dee@example.com")
    assert shown.exit_code == 0 and "every market" not in shown.output and "cpu: running GPUs" in shown.output
    assert "priority cap 10 (the default)" in shown.output

    bad = peergrid("admin", "quota", "dee@example.com", "--waiting-jobs", "lots")
    assert bad.exit_code == 1 and "--waiting-jobs takes a whole number" in bad.output
    nobody = peergrid("admin", "quota", "nobody@example.com", "--waiting-jobs", "1")
    assert nobody.exit_code == 1 and "There is no account 'nobody@example.com'" in nobody.output
    no_market = peergrid("admin", "quota", "dee@example.com", "--market", "nope", "--waiting-jobs", "1")
    assert no_market.exit_code == 1 and "There is no market 'nope'" in no_market.output


def test_admins_set_quotas_and_caps_on_the_dashboard(client, core):
    user_id, _ = factories.user(core, email="eve@example.com")
    factories.user(core, email="root@example.com", admin=True)
    sign_in(client, "root@example.com")
    page = client.get("/admin/users")
    token = csrf(page)

    set_ = client.post("/admin/quotas", data={"csrf_token": token, "user": str(user_id), "market": "cpu",
                                              "running_gpus": "", "waiting_jobs": "3"}, follow_redirects=True)
    capped = client.post(f"/admin/users/{user_id}/max-priority", data={"csrf_token": token, "max_priority": "4"},
                         follow_redirects=True)
    bad = client.post("/admin/quotas", data={"csrf_token": token, "user": str(user_id), "waiting_jobs": "-2"},
                      follow_redirects=True)

    assert "Set eve@example.com&#39;s quota on cpu." in set_.get_data(as_text=True)
    assert "may ask for priorities up to 4" in capped.get_data(as_text=True)
    assert "Waiting jobs is a whole number" in bad.get_data(as_text=True)
    shown = client.get("/admin/users").get_data(as_text=True)
    assert 'value="4"' in shown and "<td>cpu</td>" in shown
    with core.sessions() as session:
        assert session.get(User, user_id).max_priority == 4
    removed = client.post("/admin/quotas", data={"csrf_token": token, "user": str(user_id), "market": "cpu",
                                                 "clear": "1"}, follow_redirects=True)
    assert "Removed eve@example.com&#39;s quota on cpu." in removed.get_data(as_text=True)
    assert "No quotas: nobody is limited." in removed.get_data(as_text=True)


def test_people_see_their_own_cap_and_quotas_on_their_account_page(client, core):
    user_id, _ = factories.user(core, email="fay@example.com")
    with core.transaction() as session:
        set_quota(session, session.get(User, user_id), None, max_running_gpus=None, max_waiting_jobs=9)
    sign_in(client, "fay@example.com")
    page = client.get("/account").get_data(as_text=True)
    assert '<strong id="priority-cap">10</strong>' in page
    assert "<td>every market</td>" in page and '<td class="num">9</td>' in page
