"""POST /api/v1/jobs with an Idempotency-Key: a repeat answers the first job instead of making another."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from scheduler import ledger
from scheduler.models import Job, User
from tests import factories
from tests.factories import bearer, hello_world

CPU_JOB = 100 * 3600  # what one hello-world job reserves: the cpu market's price for its whole hour


def submit(client, token, key=None, doc=None, **params):
    headers = bearer(token) if key is None else {**bearer(token), "Idempotency-Key": key}
    return client.post("/api/v1/jobs", json=doc or hello_world("busybox"), headers=headers, query_string=params)


def jobs_of(core, user_id) -> int:
    with core.sessions() as session:
        return session.scalar(select(func.count(Job.id)).where(Job.owner_id == user_id))


def test_a_repeat_with_the_same_key_answers_the_first_job_and_reserves_once(client, core):
    user_id, token = factories.user(core, credits=10)

    first = submit(client, token, "4b8f-retry-me")
    again = submit(client, token, "4b8f-retry-me")
    other = submit(client, token, "another-key")

    assert first.status_code == 201 and again.status_code == 200
    assert again.json == first.json and set(again.json) == {"id", "state", "max_cost"}
    assert other.status_code == 201 and other.json["id"] != first.json["id"]
    assert jobs_of(core, user_id) == 2
    with core.sessions() as session:
        assert ledger.balances(session, user_id)["escrow"] == 2 * CPU_JOB


def test_the_same_key_with_another_request_is_refused_with_a_sentence(client, core):
    user_id, token = factories.user(core)
    first = submit(client, token, "k1")

    other_body = submit(client, token, "k1", doc=hello_world("busybox", cmd="echo other"))
    other_market = submit(client, token, "k1", market="cpu")

    for refused in (other_body, other_market):
        assert refused.status_code == 409
        assert f"made job {first.json['id']}" in refused.json["error"] and "new key" in refused.json["error"]
    assert jobs_of(core, user_id) == 1


def test_keys_are_per_person(client, core):
    ann_id, ann = factories.user(core)
    bob_id, bob = factories.user(core)

    mine, theirs = submit(client, ann, "shared-key"), submit(client, bob, "shared-key")

    assert mine.status_code == theirs.status_code == 201 and mine.json["id"] != theirs.json["id"]
    assert jobs_of(core, ann_id) == jobs_of(core, bob_id) == 1


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "naïve"])
def test_a_key_that_cannot_be_kept_is_a_bad_request(client, core, key):
    user_id, token = factories.user(core)
    response = client.post("/api/v1/jobs", json=hello_world("busybox"),
                           headers={**bearer(token), "Idempotency-Key": key.encode("utf-8").decode("latin-1")})
    assert response.status_code == 400 and "Idempotency-Key" in response.json["error"]
    assert jobs_of(core, user_id) == 0


def test_a_refused_submit_does_not_use_up_its_key(client, core):
    user_id, token = factories.user(core, credits=0)
    refused = submit(client, token, "after-the-top-up")
    with core.transaction() as session:
        ledger.grant(session, session.get(User, user_id), CPU_JOB)

    retried = submit(client, token, "after-the-top-up")

    assert refused.status_code == 402 and retried.status_code == 201
    assert jobs_of(core, user_id) == 1


def test_concurrent_submits_with_one_key_make_one_job(database_url, tmp_path):
    with factories.served(database_url, tmp_path) as (core, _):
        from web import create_app

        user_id, token = factories.user(core, credits=10)
        app = create_app(core=core)
        # A token used a moment ago is not written again, so the submits below do not queue on it.
        assert app.test_client().get("/api/v1/jobs", headers=bearer(token)).status_code == 200
        n = 8
        barrier = threading.Barrier(n)
        answers: list = [None] * n

        def run(i):
            client = app.test_client()
            barrier.wait()
            response = submit(client, token, "one-key-many-tries")
            answers[i] = (response.status_code, response.json)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

        assert sorted(status for status, _ in answers) == [200] * (n - 1) + [201], answers
        assert len({body["id"] for _, body in answers}) == 1
        assert jobs_of(core, user_id) == 1
        with core.sessions() as session:
            assert ledger.balances(session, user_id)["escrow"] == CPU_JOB
            assert ledger.check_books(session).balanced


def test_the_cli_sends_a_lost_submit_again_and_makes_exactly_one_job(tmp_path, sqlite_template):
    """A real `peergrid web` is killed (SIGKILL) right after it committed the job and before its
    answer reached `peergrid job submit`; started again, it answers the retry with that job."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.proxy import TcpProxy
    from tests.stack import Stack

    store = tmp_path / "store.sqlite"
    shutil.copy(sqlite_template, store)
    with Stack(tmp_path, database_url=f"sqlite:///{store}", broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}") as stack:
        stack.start_web()
        user_id, token = factories.user(stack.core)
        definition = tmp_path / "hello.json"
        definition.write_text(json.dumps(hello_world("busybox")))
        seen_when_killed: list[int] = []
        restarted: list[threading.Thread] = []

        def kill_after_commit():
            # The web's first bytes of its answer are here: the job is committed. Kill it before
            # they go on, and start it again while the client waits to retry.
            seen_when_killed.append(jobs_of(stack.core, user_id))
            stack.kill("web")
            restarted.append(threading.Thread(target=stack.start_web))
            restarted[0].start()

        with TcpProxy(("127.0.0.1", stack.port)) as proxy:
            proxy.on_answer = kill_after_commit
            env = {**stack.env, "PEERGRID_SERVER": f"http://127.0.0.1:{proxy.port}", "PEERGRID_TOKEN": token}
            submitted = subprocess.run([sys.executable, "-m", "cli", "job", "submit", str(definition)],
                                       env=env, capture_output=True, text=True, timeout=120)
            for thread in restarted:
                thread.join(60)

        assert seen_when_killed == [1], "the web was not killed after its commit"
        assert submitted.returncode == 0, submitted.stderr + stack.logs()
        assert "sending the submit again" in submitted.stderr
        with stack.core.sessions() as session:
            ids = list(session.scalars(select(Job.id).where(Job.owner_id == user_id)))
        assert ids == [int(submitted.stdout.strip())]
