"""Job priorities: asked for on submit (API, dashboard, command line) within the owner's cap, which
admins set per person; shown with the job; a waiting job's changed by an admin."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from werkzeug.serving import make_server

from scheduler import ledger
from scheduler.models import Job, User
from tests import factories
from tests.factories import bearer, hello_world
from tests.test_dashboard import csrf, sign_in


def submit(client, token, key=None, **params):
    headers = bearer(token) if key is None else {**bearer(token), "Idempotency-Key": key}
    return client.post("/api/v1/jobs", json=hello_world("busybox"), headers=headers, query_string=params)


def jobs_of(core, user_id) -> int:
    with core.sessions() as session:
        return session.scalar(select(func.count(Job.id)).where(Job.owner_id == user_id))


def test_a_priority_up_to_the_default_cap_is_kept_and_shown(client, core):
    user_id, token = factories.user(core)

    top, nice, plain = submit(client, token, priority=10), submit(client, token, priority="-100"), submit(client, token)

    assert top.status_code == nice.status_code == plain.status_code == 201
    shown = [client.get(f"/api/v1/jobs/{r.json['id']}", headers=bearer(token)).json["priority"] for r in (top, nice, plain)]
    assert shown == [10, -100, 0]
    listed = client.get("/api/v1/jobs", headers=bearer(token)).json["jobs"]
    assert sorted(j["priority"] for j in listed) == [-100, 0, 10]


def test_a_priority_above_the_cap_is_refused_naming_the_cap_and_moves_nothing(client, core):
    user_id, token = factories.user(core)
    with core.sessions() as session:
        before = ledger.balances(session, user_id)

    above = submit(client, token, priority=11)
    below = submit(client, token, priority=-101)

    assert above.status_code == 400 and above.json["error"] == (
        "Your priority cap is 10 (the cluster's default), so priority 11 cannot be asked for: "
        "submit with a priority of 10 or less, or ask an admin to raise your cap."
    )
    assert below.status_code == 400 and "below the lowest allowed, -100" in below.json["error"]
    assert jobs_of(core, user_id) == 0
    with core.sessions() as session:
        assert ledger.balances(session, user_id) == before
    plan = client.post("/api/v1/jobs/validate", json=hello_world("busybox"), headers=bearer(token),
                       query_string={"priority": 11})
    assert plan.json["valid"] is False and plan.json["errors"][0]["path"] == "priority"


@pytest.mark.parametrize("raw", ["high", "1.5", "", "0x10", "٣"])
def test_a_priority_that_is_not_a_whole_number_is_refused(client, core, raw):
    user_id, token = factories.user(core)
    answer = submit(client, token, priority=raw)
    if raw == "":  # an empty parameter is no priority asked
        assert answer.status_code == 201 and answer.json and jobs_of(core, user_id) == 1
        return
    assert answer.status_code == 400 and "A priority is a whole number, like 5 or -2" in answer.json["error"]
    assert jobs_of(core, user_id) == 0


def test_an_admin_caps_a_person_and_admins_may_ask_any(client, core):
    user_id, token = factories.user(core, email="pat@example.com")
    _, admin = factories.user(core, admin=True)

    raised = client.put("/api/v1/admin/users/pat@example.com/max-priority", json={"max_priority": 50},
                        headers=bearer(admin))
    assert raised.status_code == 200 and raised.json["max_priority"] == 50 and raised.json["priority_cap"] == 50
    assert submit(client, token, priority=50).status_code == 201
    refused = submit(client, token, priority=51)
    assert refused.status_code == 400 and "Your priority cap is 50 (an admin set you)" in refused.json["error"]

    back = client.put(f"/api/v1/admin/users/{user_id}/max-priority", json={"max_priority": None}, headers=bearer(admin))
    assert back.json["max_priority"] is None and back.json["priority_cap"] == 10
    assert submit(client, token, priority=11).status_code == 400
    bad = client.put(f"/api/v1/admin/users/{user_id}/max-priority", json={"max_priority": -3}, headers=bearer(admin))
    assert bad.status_code == 400 and "A priority cap is a whole number from 0" in bad.json["error"]
    assert submit(client, admin, priority=5000).status_code == 201


def test_the_cluster_default_cap_is_a_setting(sqlite_url, tmp_path):
    with factories.served(sqlite_url, tmp_path, PEERGRID_MAX_PRIORITY="3", PEERGRID_MIN_PRIORITY="-5") as (core, client):
        _, token = factories.user(core)
        assert submit(client, token, priority=3).status_code == 201
        assert "Your priority cap is 3" in submit(client, token, priority=4).json["error"]
        assert "below the lowest allowed, -5" in submit(client, token, priority=-6).json["error"]


def test_the_idempotency_digest_includes_the_priority(client, core):
    _, token = factories.user(core)
    first = submit(client, token, key="k", priority=2)

    again = submit(client, token, key="k", priority=2)
    other = submit(client, token, key="k", priority=3)
    unasked = submit(client, token, key="k")

    assert first.status_code == 201 and again.status_code == 200 and again.json["id"] == first.json["id"]
    assert other.status_code == unasked.status_code == 409


def test_an_admin_changes_a_waiting_jobs_priority(client, core):
    user_id, token = factories.user(core)
    _, admin = factories.user(core, admin=True)
    job_id = submit(client, token).json["id"]

    changed = client.post(f"/api/v1/admin/jobs/{job_id}/priority", json={"priority": 99}, headers=bearer(admin))

    assert changed.status_code == 200 and changed.json["priority"] == 99
    assert client.post(f"/api/v1/admin/jobs/{job_id}/priority", json={"priority": "x"},
                       headers=bearer(admin)).status_code == 400
    client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(token))
    ended = client.post(f"/api/v1/admin/jobs/{job_id}/priority", json={"priority": 1}, headers=bearer(admin))
    assert ended.status_code == 409 and "only a waiting (queued) job's priority can change" in ended.json["error"]
    with core.sessions() as session:
        assert session.get(Job, job_id).priority == 99


def test_the_dashboard_submits_with_a_priority_and_shows_it(client, core):
    import json

    factories.user(core, email="dash@example.com")
    sign_in(client, "dash@example.com")
    form = client.get("/submit")
    assert 'id="priority"' in form.get_data(as_text=True)
    text = json.dumps(hello_world("busybox"))

    posted = client.post("/submit", data={"definition": text, "priority": "7", "csrf_token": csrf(form)})
    over = client.post("/submit", data={"definition": text, "priority": "12", "csrf_token": csrf(form)})
    checked = client.post("/submit/check", json={"definition": text, "priority": "abc"},
                          headers={"X-CSRF-Token": csrf(form)})

    assert posted.status_code == 302, posted.get_data(as_text=True)
    page = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert '<span id="job-priority">7</span>' in page
    assert over.status_code == 422 and "Your priority cap is 10" in over.get_data(as_text=True)
    assert checked.json["valid"] is False and checked.json["errors"][0]["path"] == "priority"


@pytest.fixture
def served_web(app):
    """The app behind a real HTTP server on loopback, for the command line's client."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_the_command_line_submits_with_a_priority_and_shows_it(core, settings, served_web, tmp_path):
    import json

    from cli import main

    _, token = factories.user(core, email="cli@example.com")
    definition = tmp_path / "hello.json"
    definition.write_text(json.dumps(hello_world("busybox")))
    runner = CliRunner()
    user = {"PEERGRID_SERVER": served_web, "PEERGRID_TOKEN": token}
    store = {"PEERGRID_DATABASE_URL": settings.database_url, "PEERGRID_BROKER_URL": settings.broker_url,
             "PEERGRID_SECRET_KEY": "x", "PEERGRID_DATA_DIR": str(settings.data_dir)}

    made = runner.invoke(main, ["job", "submit", str(definition), "--priority", "4"], env=user)
    assert made.exit_code == 0, made.output
    status = runner.invoke(main, ["job", "status", made.output.strip()], env=user)
    assert status.exit_code == 0 and "priority 4" in status.output

    refused = runner.invoke(main, ["job", "submit", str(definition), "--priority", "20"], env=user)
    assert refused.exit_code == 1 and "Your priority cap is 10" in refused.output

    capped = runner.invoke(main, ["admin", "max-priority", "cli@example.com", "20"], env=store)
    assert capped.exit_code == 0 and "cli@example.com may ask for priorities up to 20." in capped.output
    assert runner.invoke(main, ["job", "submit", str(definition), "--priority", "20"], env=user).exit_code == 0
    reset = runner.invoke(main, ["admin", "max-priority", "cli@example.com", "default"], env=store)
    assert "up to the cluster's default, 10" in reset.output
    with core.sessions() as session:
        assert session.scalar(select(User.max_priority).where(User.email == "cli@example.com")) is None
    bad = runner.invoke(main, ["admin", "max-priority", "cli@example.com", "lots"], env=store)
    assert bad.exit_code == 1 and "CAP is a whole number" in bad.output
