"""Job arrays: the spec, each job's index, one escrow for all, bulk cancel, the API and the CLI,
a 10,000-job submit, and a small array run on the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import distinct, func, select

from scheduler import ledger, offers, placing
from scheduler.array_spec import BadArraySpec, parse_array_spec
from scheduler.arrays import running_counts, submit_array
from scheduler.attempts import claim_attempt, start_attempt
from scheduler.models import Attempt, Job, JobArray, LedgerTransaction, Node, Op, User
from scheduler.nodes import NodeReport, register
from tests import factories
from tests.factories import bearer
from tests.stack import embedded_stack

M = ledger.MICRO
PER_JOB = 3600 * 100  # the seeded cpu market: 100 µcr a core-second, for the default hour


def sweep(image: str = "busybox", *, second: bool = False) -> dict:
    """A definition whose op prints its index twice: from its env and from the literal."""
    ops = [{"id": "train", "type": "container/run",
            "args": {"image": image, "cmd": ["sh", "-c", "echo index=$PEERGRID_ARRAY_INDEX seed=%%array.index%%"]}}]
    if second:
        ops.append({"id": "score", "type": "container/run", "execution": {"depends_on": ["train"]},
                    "args": {"image": image, "cmd": ["echo", "%%array.index%%"], "env": {"SHARD": "%%array.index%%"}}})
    return {"version": "0.1", "ops": ops}


def submit(client, token, spec: str, doc=None, **headers):
    return client.post(f"/api/v1/jobs?array={spec}", json=doc or sweep(), headers={**bearer(token), **headers})


# -- the spec --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, indices, limit", [
    ("0-4", [0, 1, 2, 3, 4], None),
    ("0-999%50", list(range(1000)), 50),
    ("1,3,5-9", [1, 3, 5, 6, 7, 8, 9], None),
    ("0-20:5", [0, 5, 10, 15, 20], None),
    ("7", [7], None),
    ("3-5,4-6 %2", [3, 4, 5, 6], 2),
])
def test_a_spec_names_its_indices_and_how_many_run_at_once(text, indices, limit):
    spec = parse_array_spec(text, max_size=10_000)
    assert list(spec.indices) == indices and spec.size == len(indices) and spec.max_running == limit


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("5-1", "'5-1' is empty: its end is below its start; write it 1-5"),
    ("0-20:0", "step of 0"),
    ("a-b", "'a-b' is neither an index"),
    ("-3", "neither an index"),
    ("1,,2", "empty item between commas"),
    ("0-9%0", "what follows % must be the most jobs that run at once"),
    ("0-9%x", "what follows %"),
    ("%4", "no indices before %"),
    ("0-10000", "makes 10,001 jobs; this server takes at most 10,000 in one array"),
    ("0-99999999999", "goes past the largest index"),
])
def test_a_wrong_spec_says_what_is_wrong_and_shows_a_good_one(text, says):
    with pytest.raises(BadArraySpec) as refused:
        parse_array_spec(text, max_size=10_000)
    assert says in str(refused.value)
    if text:
        assert "like 0-99, 0-999%50" in str(refused.value) or "PEERGRID_MAX_ARRAY_SIZE" in str(refused.value)


def test_the_api_refuses_a_wrong_spec_and_one_over_the_limit(client, core):
    _, token = factories.user(core, credits=100)
    refused = submit(client, token, "9-0")
    assert refused.status_code == 400 and "write it 0-9" in refused.json["error"]
    too_big = submit(client, token, "0-10000")
    assert too_big.status_code == 400 and "PEERGRID_MAX_ARRAY_SIZE" in too_big.json["error"]
    with core.transaction() as session:
        assert session.scalar(select(func.count(JobArray.id))) == 0


# -- each job's index -----------------------------------------------------------------------


def test_each_job_sees_its_index_in_its_env_and_its_literals(client, core):
    # Given a definition of two ops, the second waiting for the first
    _, token = factories.user(core, credits=100)
    # When it is submitted as an array of every 10th index
    created = submit(client, token, "0-20:10%2", sweep(second=True))
    assert created.status_code == 201, created.json
    body = created.json
    assert body["size"] == 3 and body["state"] == "queued" and body["max_cost"] == 3 * 2 * PER_JOB
    shown = client.get(f"/api/v1/arrays/{body['id']}", headers=bearer(token)).json
    assert shown["counts"]["queued"] == 3 and shown["progress"] == "0/3 done; 3 queued" and shown["max_running"] == 2
    # Then each job's ops carry its index, in env and in place of the literal, in the stored spec
    with core.transaction() as session:
        jobs = list(session.scalars(select(Job).where(Job.array_id == body["id"]).order_by(Job.array_index)))
        assert [j.id for j in jobs] == shown["jobs"] and [j.array_index for j in jobs] == [0, 10, 20]
        for job in jobs:
            train, score = sorted(job.ops, key=lambda o: o.position)
            i = str(job.array_index)
            assert train.spec["env"]["PEERGRID_ARRAY_INDEX"] == i
            assert train.spec["cmd"] == ["sh", "-c", f"echo index=$PEERGRID_ARRAY_INDEX seed={i}"]
            assert score.spec["env"] == {"SHARD": i, "PEERGRID_ARRAY_INDEX": i} and score.spec["cmd"] == ["echo", i]
            # the first op is queued with its attempt, as a lone job's is; the second waits
            assert train.state.value == "queued" and len(train.attempts) == 1 and train.attempts[0].state.value == "queued"
            assert score.state.value == "pending" and not score.attempts
    job = client.get(f"/api/v1/jobs/{shown['jobs'][1]}", headers=bearer(token)).json
    assert job["array_id"] == body["id"] and job["array_index"] == 10
    assert "job 10 of array" in job["events"][0]["message"]


def test_other_literals_resolve_per_job_and_a_lone_job_is_told_to_use_an_array(client, core):
    _, token = factories.user(core, credits=100)
    doc = sweep()
    doc["ops"][0]["args"]["cmd"] = ["echo", "%%global.job%%-%%array.index%%"]
    created = submit(client, token, "4-5", doc)
    assert created.status_code == 201
    with core.transaction() as session:
        specs = {j.id: j.ops[0].spec["cmd"] for j in session.scalars(select(Job).where(Job.array_id == created.json["id"]))}
    assert sorted(specs.values()) == sorted([["echo", f"{job_id}-{i}"] for job_id, i in zip(sorted(specs), (4, 5))])
    # The literal outside an array is refused, saying how to make one
    lone = client.post("/api/v1/jobs", json=sweep(), headers=bearer(token))
    assert lone.status_code == 422
    problem = lone.json["errors"][0]
    assert problem["path"] == "$.ops[0].args.cmd[2]" and "--array" in problem["message"]
    assert client.post("/api/v1/jobs/validate?array=0-3", json=sweep(), headers=bearer(token)).json["valid"]
    wrong = client.post("/api/v1/jobs?array=0-1", json={**sweep(), "ops": [
        {"id": "a", "type": "container/run", "args": {"image": "busybox", "cmd": ["echo", "%%array.size%%"]}}]},
        headers=bearer(token))
    assert wrong.status_code == 422 and "knows only %%array.index%%" in wrong.json["errors"][0]["message"]


def test_an_op_that_reads_its_own_endpoint_resolves_it_per_job(client, core):
    # Given a service whose env names the URL of its own port, which only a stored op has
    _, token = factories.user(core, credits=100)
    doc = {"version": "0.1", "ops": [{"id": "web", "type": "container/run", "args": {
        "image": "busybox", "expose": 8080, "env": {"URL": "%%ops.web.endpoint.8080%%", "SHARD": "%%array.index%%"}}}]}
    # When it is submitted as an array, each job advances as a lone one would
    created = submit(client, token, "0-1", doc)
    assert created.status_code == 201, created.json
    with core.transaction() as session:
        ops = list(session.scalars(select(Op).join(Job).where(Job.array_id == created.json["id"]).order_by(Job.array_index)))
        # Then each is queued with its own URL and index, and one attempt
        assert [o.state.value for o in ops] == ["queued", "queued"] and [len(o.attempts) for o in ops] == [1, 1]
        assert [o.spec["env"]["SHARD"] for o in ops] == ["0", "1"]
        urls = [o.spec["env"]["URL"] for o in ops]
        assert all(url.startswith("http://") for url in urls) and urls[0] != urls[1]


# -- one escrow ------------------------------------------------------------------------------


def test_one_escrow_covers_the_whole_array_or_the_submit_is_refused_with_the_shortfall(client, core):
    # Given someone whose credits cover nine jobs' longest runs but not ten
    user_id, token = factories.user(core, credits=0)
    with core.transaction() as session:
        ledger.grant(session, session.get(User, user_id), 9 * PER_JOB + 1)
    # When they submit ten: refused with what is missing, and nothing is stored or reserved
    refused = submit(client, token, "0-9")
    assert refused.status_code == 402
    assert refused.json["shortfall"] == PER_JOB - 1 and refused.json["needed"] == 10 * PER_JOB
    assert "short by 0.359999" in refused.json["error"] and "10 jobs" in refused.json["error"]
    with core.transaction() as session:
        assert session.scalar(select(func.count(JobArray.id))) == 0
        assert session.scalar(select(func.count(Job.id))) == 0
        assert session.scalar(select(func.count(LedgerTransaction.id)).where(LedgerTransaction.kind == "escrow")) == 0
        assert ledger.balances(session, user_id)["available"] == 9 * PER_JOB + 1
    # When they submit nine: one escrow movement holds all of it, each job its share
    created = submit(client, token, "1-9")
    assert created.status_code == 201 and created.json["max_cost"] == 9 * PER_JOB
    with core.transaction() as session:
        escrows = list(session.scalars(select(LedgerTransaction).where(LedgerTransaction.kind == "escrow")))
        assert [t.key for t in escrows] == [f"escrow:array:{created.json['id']}"]
        assert ledger.balances(session, user_id) == {"available": 1, "escrow": 9 * PER_JOB, "earnings": 0,
                                                     "payout_pending": 0}
        assert set(session.scalars(select(Job.reserved).where(Job.array_id == created.json["id"]))) == {PER_JOB}
        assert ledger.check_books(session).balanced


# -- cancelling ------------------------------------------------------------------------------


def test_cancel_ends_every_job_bills_what_ran_and_returns_the_rest(client, core):
    # Given an array of five, one of whose jobs a node has claimed and started
    user_id, token = factories.user(core, credits=100)
    created = submit(client, token, "0-4%3").json
    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(slots=4))
        attempt = session.scalars(select(Attempt).join(Op).join(Job).where(Job.array_id == created["id"])
                                  .order_by(Attempt.id)).first()
        claim_attempt(session, node, attempt.id)
        start_attempt(session, node, attempt.id)
        assert running_counts(session, [created["id"], created["id"] + 1]) == {created["id"]: 1}
    # When the array is cancelled in one request
    done = client.post(f"/api/v1/arrays/{created['id']}/cancel", headers=bearer(token))
    assert done.status_code == 200, done.json
    # Then every job, op and attempt has ended; only the started attempt is billed; the books balance
    assert done.json["counts"]["cancelled"] == 5 and done.json["progress"] == "5/5 done: 5 cancelled"
    assert done.json["state"] == "cancelled"
    with core.transaction() as session:
        assert {a.state.value for a in session.scalars(select(Attempt))} == {"cancelled"}
        assert {o.state.value for o in session.scalars(select(Op))} == {"cancelled"}
        assert set(session.scalars(select(Job.reserved))) == {0}
        spent = session.scalar(select(func.sum(Job.cost)))
        assert ledger.balances(session, user_id)["available"] == 100 * M - spent
        assert ledger.balances(session, user_id)["escrow"] == 0
        assert ledger.check_books(session).balanced
        assert running_counts(session, [created["id"]]) == {}
    again = client.post(f"/api/v1/arrays/{created['id']}/cancel", headers=bearer(token))
    assert again.status_code == 200 and again.json["counts"]["cancelled"] == 5


def test_another_persons_array_and_an_unknown_one_are_not_found(client, core):
    _, owner = factories.user(core, credits=100)
    _, other = factories.user(core, credits=100)
    array_id = submit(client, owner, "0-1").json["id"]
    for token, wanted in ((other, array_id), (owner, array_id + 1)):
        assert client.get(f"/api/v1/arrays/{wanted}", headers=bearer(token)).status_code == 404
        assert client.post(f"/api/v1/arrays/{wanted}/cancel", headers=bearer(token)).status_code == 404
    assert client.get(f"/api/v1/arrays/{array_id}", headers=bearer(owner)).json["counts"]["queued"] == 2
    assert client.get(f"/arrays/{array_id}").status_code == 302  # the page asks to sign in


def test_a_repeat_of_the_idempotency_key_answers_the_same_array(client, core):
    _, token = factories.user(core, credits=100)
    first = submit(client, token, "0-3", **{"Idempotency-Key": "sweep-1"})
    repeat = submit(client, token, "0-3", **{"Idempotency-Key": "sweep-1"})
    assert first.status_code == 201 and repeat.status_code == 200 and repeat.json["id"] == first.json["id"]
    assert repeat.json["max_cost"] == first.json["max_cost"]
    other = submit(client, token, "0-4", **{"Idempotency-Key": "sweep-1"})
    assert other.status_code == 409 and f"array {first.json['id']}" in other.json["error"]
    with core.transaction() as session:
        assert session.scalar(select(func.count(Job.id))) == 4


# -- 10,000 jobs -----------------------------------------------------------------------------


def test_an_array_of_ten_thousand_jobs_is_one_submit(store_core):
    # Given someone with credits for 10,000 one-hour jobs (2,000 on PostgreSQL, whose driver takes
    # seconds longer for 10,000: 2,000 go through the same statements there)
    jobs = 10_000 if store_core.settings.database_url.startswith("sqlite") else 2_000
    user_id, _ = factories.user(store_core, credits=10_000)
    # When they submit them as one array (it asks for a placement pass, not sent: no broker is needed here)
    session = store_core.sessions()
    try:
        made = submit_array(session, session.get(User, user_id), sweep(),
                            parse_array_spec(f"0-{jobs - 1}%50", max_size=10_000),
                            default_timeout_s=3600, max_array_ops=100_000)
        assert offers.take_staged(session) == [] and placing.take_wanted(session)
        session.commit()
        array_id = made.array.id
    finally:
        session.close()
    # Then every job, op and first attempt is stored, with its index, and one escrow holds it all
    with store_core.transaction() as session:
        assert session.scalar(select(func.count(Job.id)).where(Job.array_id == array_id)) == jobs
        assert session.scalar(select(func.count(distinct(Job.array_index))).where(Job.array_id == array_id)) == jobs
        assert session.scalar(select(func.count(Attempt.id))) == jobs
        last = session.scalar(select(Op).join(Job).where(Job.array_id == array_id, Job.array_index == jobs - 1))
        assert last.spec["env"]["PEERGRID_ARRAY_INDEX"] == str(jobs - 1)
        assert last.spec["cmd"][2].endswith(f"seed={jobs - 1}")
        assert ledger.balances(session, user_id)["escrow"] == jobs * PER_JOB
        assert ledger.check_books(session).balanced


# -- on the real stack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def array_stack(tmp_path_factory, sqlite_template, docker_client):
    root = tmp_path_factory.mktemp("arrays")
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    with embedded_stack(root, f"sqlite:///{db}", worker=True) as stack:
        yield stack


def test_three_jobs_each_echo_their_index_on_the_real_stack(array_stack, test_image, tmp_path):
    # Given a definition that echoes its index, submitted with the CLI as an array of three
    stack = array_stack
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep(test_image)))
    token = stack.api.http.headers["Authorization"].split()[1]
    env = {**stack.env, "PEERGRID_SERVER": stack.url, "PEERGRID_TOKEN": token}
    run = subprocess.run([sys.executable, "-m", "cli", "job", "submit", str(path), "--array", "0-2", "--wait"],
                         env=env, capture_output=True, text=True, timeout=120)
    # Then it waits until all three succeeded, and each printed its own index both ways
    assert run.returncode == 0, run.stderr + stack.logs()
    array_id = int(run.stdout.split()[0])
    body = stack.api.get(f"/arrays/{array_id}")
    assert body["counts"]["succeeded"] == 3 and body["state"] == "succeeded"
    printed = {}
    for job_id in body["jobs"]:
        job = stack.api.get(f"/jobs/{job_id}")
        lines = [line["text"] for line in stack.api.get(f"/jobs/{job_id}/logs")["lines"] if line["stream"] == "stdout"]
        printed[job["array_index"]] = lines
    assert printed == {i: [f"index={i} seed={i}"] for i in range(3)}
    status = subprocess.run([sys.executable, "-m", "cli", "array", "status", str(array_id)],
                            env=env, capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "3/3 done: 3 succeeded" in status.stdout
    cancelled = subprocess.run([sys.executable, "-m", "cli", "array", "cancel", str(array_id)],
                               env=env, capture_output=True, text=True, timeout=30)
    assert cancelled.returncode == 0 and f"array {array_id}: 3/3 done: 3 succeeded" in cancelled.stdout


def test_validate_accepts_the_literal_only_as_an_arrays(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep()))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    lone = subprocess.run([sys.executable, "-m", "cli", "job", "validate", str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert lone.returncode == 1 and "only in a job of an array" in lone.stdout
    array = subprocess.run([sys.executable, "-m", "cli", "job", "validate", str(path), "--array", "0-3"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert array.returncode == 0 and "valid, 1 op(s)" in array.stdout
