"""Large jobs: validating, submitting and advancing grow with the number of ops, not its square or
cube, and the server takes at most PEERGRID_MAX_OPS_PER_JOB ops in one job.

Work is counted as Python function calls (cProfile), which do not depend on the machine's speed:
doubling the ops must not much more than double them.
"""

from __future__ import annotations

import cProfile
from datetime import timedelta

from sqlalchemy import select

from scheduler.attempts import claim_attempt, finish_attempt, start_attempt
from scheduler.jobdef import parse_definition
from scheduler.jobs import submit_job
from scheduler.models import Attempt, Job, Node, Op, User
from scheduler.nodes import NodeReport, register
from scheduler.settings import Settings
from scheduler.states import OpState, utcnow
from tests import factories
from tests.factories import bearer, many_ops


def calls(work) -> int:
    profile = cProfile.Profile()
    profile.enable()
    try:
        work()
    finally:
        profile.disable()
    return sum(entry.callcount for entry in profile.getstats())


def submit_calls(core, user_id: int, n: int, shape: str) -> int:
    def work():
        with core.transaction() as session:
            submit_job(session, session.get(User, user_id), many_ops(n, shape), default_timeout_s=600)

    return calls(work)


def assert_linear(small: int, large: int, what: str) -> None:
    # Twice the ops: twice the work is linear, four times quadratic (and a little quadratic work
    # beside much linear work, as SQLAlchemy's, already shows as more than 2.3).
    assert large < 2.3 * small, f"{what}: {small} calls for n, {large} for 2n ({large / small:.2f}×)"


def test_validating_grows_linearly_with_the_ops():
    for shape in ("sequence", "group", "chain"):
        parse_definition(many_ops(20, shape))
        assert_linear(calls(lambda: parse_definition(many_ops(300, shape))),
                      calls(lambda: parse_definition(many_ops(600, shape))), f"validate {shape}")


def test_a_long_chain_of_dependencies_is_checked_without_recursion():
    assert len(parse_definition(many_ops(5000, "chain")).ops) == 5000


def test_submitting_grows_linearly_with_the_ops(core):
    user_id, _ = factories.user(core, credits=10**6)
    for shape in ("sequence", "group"):
        submit_calls(core, user_id, 20, shape)  # statements compiled and cached once, not counted
        assert_linear(submit_calls(core, user_id, 200, shape), submit_calls(core, user_id, 400, shape),
                      f"submit {shape}")


def test_a_failure_that_skips_a_whole_chain_is_one_pass(core):
    """Given a chain where each op depends on the next one listed, when the last op fails, every
    other op is skipped, each examined a bounded number of times however long the chain."""
    user_id, _ = factories.user(core, credits=10**6)
    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        register(session, session.get(Node, node_id), NodeReport(slots=1))

    def fail_the_last(n: int) -> int:
        with core.transaction() as session:
            job_id = submit_job(session, session.get(User, user_id), many_ops(n, "chain"), default_timeout_s=600).id
        with core.transaction() as session:
            node = session.get(Node, node_id)
            attempt = session.scalar(select(Attempt).join(Op).where(Op.job_id == job_id))
            start = utcnow()
            claim_attempt(session, node, attempt.id, now=start)
            start_attempt(session, node, attempt.id, now=start)
            for op in session.get(Job, job_id).ops:
                op.attempts  # loaded before counting: what is counted is deciding, not reading
            counted = calls(lambda: finish_attempt(session, node, attempt.id, exit_code=1,
                                                   now=start + timedelta(seconds=1)))
        with core.sessions() as session:
            states = [op.state for op in session.get(Job, job_id).ops]
        assert states == [OpState.SKIPPED] * (n - 1) + [OpState.FAILED]
        return counted

    fail_the_last(10)
    assert_linear(fail_the_last(100), fail_the_last(200), "advance after a failure")


def test_a_job_with_more_ops_than_the_server_takes_is_refused_at_ops(client, core):
    _, token = factories.user(core, credits=10**6)
    limit = core.settings.max_ops_per_job
    assert limit == 1000

    refused = client.post("/api/v1/jobs", json=many_ops(limit + 1, "sequence"), headers=bearer(token))
    taken = client.post("/api/v1/jobs", json=many_ops(limit, "group"), headers=bearer(token))

    assert refused.status_code == 422
    (problem,) = refused.json["errors"]
    assert problem["path"] == "$.ops"
    assert "1001 ops" in problem["message"] and "at most 1000" in problem["message"]
    assert "split" in problem["message"].lower() and "PEERGRID_MAX_OPS_PER_JOB" in problem["message"]
    assert taken.status_code == 201, taken.json


def test_the_cap_on_ops_is_a_setting_the_api_and_the_submit_page_apply(tmp_path, sqlite_url):
    import json

    from tests.test_dashboard import csrf, sign_in

    settings = Settings.from_env({"PEERGRID_MAX_OPS_PER_JOB": "3", "PEERGRID_DATABASE_URL": sqlite_url}, data_dir=tmp_path)
    assert settings.max_ops_per_job == 3
    with factories.served(sqlite_url, tmp_path, PEERGRID_MAX_OPS_PER_JOB="3") as (core, client):
        _, token = factories.user(core, email="cap@example.com")
        assert client.post("/api/v1/jobs", json=many_ops(4, "sequence"), headers=bearer(token)).status_code == 422
        assert client.post("/api/v1/jobs", json=many_ops(3, "sequence"), headers=bearer(token)).status_code == 201
        sign_in(client, "cap@example.com")
        check = client.post("/submit/check", json={"definition": json.dumps(many_ops(4, "sequence"))},
                            headers={"X-CSRF-Token": csrf(client.get("/submit"))})
        assert check.json["valid"] is False and check.json["errors"][0]["path"] == "$.ops"


def test_an_ungrouped_op_and_a_group_named_like_it_are_different_groups():
    doc = {"version": "0.1", "ops": [
        {"id": "a", "type": "container/run", "args": {"image": "x"}, "execution": {"group": "op:b"}},
        {"id": "b", "type": "container/run", "args": {"image": "x"}},
    ]}
    ops = parse_definition(doc).ops
    assert ops[0].group_key != ops[1].group_key
