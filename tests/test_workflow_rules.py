"""Workflow rules, fast: group order, skips after a failure, stop_if_dependent_stops, retries, lost
attempts and every way an attempt ends, through the orchestration functions on a real SQLite store,
with no containers and no broker. tests/test_workflows.py proves the same on real containers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from protocol.messages import NodeReport
from scheduler import secrets
from scheduler.attempts import claim_attempt, claim_work, expire_overdue, finish_attempt, lose_attempts, start_attempt
from scheduler.jobs import submit_job
from scheduler.models import Attempt, Job, Node, User
from scheduler.nodes import register
from scheduler.orchestration import MAX_LOST_ATTEMPTS, cancel_job
from scheduler.states import AttemptState, JobState, OpState, utcnow
from tests import factories


def op(key: str, cmd: str = "true", *, group: str = "main", depends_on=(), stop_if=False, **args) -> dict:
    execution = {"group": group, "depends_on": list(depends_on)}
    if stop_if:
        execution["stop_if_dependent_stops"] = True
    return {"type": "container/run", "id": key, "args": {"image": "busybox", "cmd": cmd, **args},
            "execution": execution}


class Flow:
    """One person's job and one node that runs its attempts, on the test's store."""

    def __init__(self, core):
        self.core = core
        self.user_id, _ = factories.user(core)
        self.node_id, _, _ = factories.node(core)
        with core.transaction() as session:
            register(session, session.get(Node, self.node_id), NodeReport(slots=8))

    def submit(self, *ops) -> int:
        with self.core.transaction() as session:
            job = submit_job(session, session.get(User, self.user_id), {"version": "0.1", "ops": list(ops)},
                             default_timeout_s=600)
            return job.id

    def waiting(self, job_id: int, key: str) -> int:
        """The id of the op's queued attempt."""
        with self.core.transaction() as session:
            job = session.get(Job, job_id)
            attempts = next(o for o in job.ops if o.key == key).attempts
            assert attempts and attempts[-1].state == AttemptState.QUEUED, [a.state for a in attempts]
            return attempts[-1].id

    def start(self, job_id: int, key: str) -> int:
        attempt_id = self.waiting(job_id, key)
        with self.core.transaction() as session:
            node = session.get(Node, self.node_id)
            claim_attempt(session, node, attempt_id)
            start_attempt(session, node, attempt_id, now=utcnow() - timedelta(seconds=10))
        return attempt_id

    def run(self, job_id: int, key: str, exit_code: int = 0) -> int:
        attempt_id = self.start(job_id, key)
        with self.core.transaction() as session:
            finish_attempt(session, session.get(Node, self.node_id), attempt_id, exit_code=exit_code)
        return attempt_id

    def states(self, job_id: int) -> dict[str, str]:
        with self.core.transaction() as session:
            job = session.get(Job, job_id)
            return {"job": job.state.value, **{o.key: o.state.value for o in job.ops}}

    def attempts(self, job_id: int, key: str) -> list[Attempt]:
        with self.core.transaction() as session:
            job = session.get(Job, job_id)
            return list(next(o for o in job.ops if o.key == key).attempts)

    def error(self, job_id: int, key: str) -> str:
        with self.core.transaction() as session:
            return next(o for o in session.get(Job, job_id).ops if o.key == key).error


@pytest.fixture
def flow(core) -> Flow:
    return Flow(core)


def test_groups_run_in_order_and_a_failure_skips_only_its_dependents(flow):
    # Given a first group and a second whose ops depend on the first or on nothing
    job = flow.submit(op("first", group="pre"), op("independent"), op("dependent", depends_on=["first"]))
    assert flow.states(job) == {"job": "queued", "first": "queued", "independent": "pending", "dependent": "pending"}

    # When the first group's op fails
    flow.run(job, "first", exit_code=1)

    # Then the next group starts, and only what depends on the failure is skipped
    assert flow.states(job) == {"job": "running", "first": "failed", "independent": "queued", "dependent": "skipped"}
    assert "'first', which it depends on, did not succeed" in flow.error(job, "dependent")
    flow.run(job, "independent")
    assert flow.states(job)["job"] == "failed"


def test_an_op_waits_for_what_it_depends_on_within_its_group(flow):
    job = flow.submit(op("a"), op("b", depends_on=["a"]))
    assert flow.states(job) == {"job": "queued", "a": "queued", "b": "pending"}
    flow.run(job, "a")
    assert flow.states(job)["b"] == "queued"
    flow.run(job, "b")
    assert flow.states(job) == {"job": "succeeded", "a": "succeeded", "b": "succeeded"}


def test_a_failed_attempt_is_retried_while_tries_remain_and_each_try_is_billed(flow):
    job = flow.submit(op("flaky", restart_policy={"policy": "on-failure", "restart_tries": 1}))
    flow.run(job, "flaky", exit_code=3)
    assert flow.states(job)["flaky"] == "queued"
    flow.run(job, "flaky", exit_code=3)
    attempts = flow.attempts(job, "flaky")
    assert [a.state for a in attempts] == [AttemptState.FAILED, AttemptState.FAILED]
    assert all(a.cost > 0 and "µcr/s" in a.cost_note for a in attempts)
    assert attempts[-1].error == "The container exited with code 3."
    assert flow.states(job) == {"job": "failed", "flaky": "failed"}


def test_a_lost_attempt_is_offered_again_for_free_without_using_a_try(flow, core):
    job = flow.submit(op("work"))
    for _ in range(MAX_LOST_ATTEMPTS - 1):
        flow.start(job, "work")
        with core.transaction() as session:
            lose_attempts(session, session.get(Node, flow.node_id), "the test pulled its plug.")
        assert flow.states(job)["work"] == "queued"  # one try allowed, and none used up
    flow.run(job, "work")
    attempts = flow.attempts(job, "work")
    assert [a.state for a in attempts] == [AttemptState.LOST] * (MAX_LOST_ATTEMPTS - 1) + [AttemptState.SUCCEEDED]
    assert all(a.cost == 0 and a.cost_note == "Not billed: lost with its node." for a in attempts[:-1])
    assert flow.states(job)["job"] == "succeeded"


def test_an_op_that_keeps_losing_its_node_fails(flow, core):
    job = flow.submit(op("cursed"))
    for _ in range(MAX_LOST_ATTEMPTS):
        flow.start(job, "cursed")
        with core.transaction() as session:
            lose_attempts(session, session.get(Node, flow.node_id), "it brought the node down.")
    assert flow.states(job) == {"job": "failed", "cursed": "failed"}
    assert "brought the node down" in flow.error(job, "cursed")


def test_an_op_that_serves_another_starts_with_it_and_stops_when_it_ends(flow):
    job = flow.submit(op("task"), op("sidecar", depends_on=["task"], stop_if=True))
    assert flow.states(job)["sidecar"] == "pending"
    task = flow.start(job, "task")
    assert flow.states(job)["sidecar"] == "queued"  # it starts once what it serves has started
    sidecar = flow.start(job, "sidecar")
    with flow.core.transaction() as session:
        finish_attempt(session, session.get(Node, flow.node_id), task, exit_code=0)
    assert flow.states(job) == {"job": "succeeded", "task": "succeeded", "sidecar": "stopped"}
    stopped = flow.attempts(job, "sidecar")[-1]
    assert stopped.id == sidecar and stopped.state == AttemptState.STOPPED and stopped.cost > 0
    assert "'task', which it depends on, ended" in stopped.error


def test_a_sidecar_whose_op_ended_without_starting_is_skipped(flow, core):
    job = flow.submit(op("task"), op("sidecar", depends_on=["task"], stop_if=True))
    with core.transaction() as session:
        cancel_job(session, session.get(Job, job))
    assert flow.states(job) == {"job": "cancelled", "task": "cancelled", "sidecar": "cancelled"}


def test_cancelling_bills_what_ran_and_not_what_waited(flow, core):
    job = flow.submit(op("running"), op("waiting", group="later"), op("queued"))
    running = flow.start(job, "running")
    with core.transaction() as session:
        cancel_job(session, session.get(Job, job), by="an admin")
        attempts = {a.id: a for a in session.scalars(select(Attempt))}
        job_row = session.get(Job, job)
        assert job_row.state == JobState.CANCELLED and job_row.reserved == 0
    billed = attempts.pop(running)
    assert billed.state == AttemptState.CANCELLED and billed.cost > 0 and billed.error == "Cancelled by an admin."
    assert [(a.state, a.cost, a.cost_note) for a in attempts.values()] == [
        (AttemptState.CANCELLED, 0, "Not billed: the container never started.")]


def test_a_node_silent_past_the_time_limit_times_out_unbilled(flow, core):
    job = flow.submit(op("slow", timeout=5))
    flow.start(job, "slow")
    with core.transaction() as session:
        expired = expire_overdue(session, grace_s=1, now=utcnow() + timedelta(seconds=60))
        assert len(expired) == 1
    attempt = flow.attempts(job, "slow")[0]
    assert attempt.state == AttemptState.FAILED and attempt.cost == 0
    assert attempt.cost_note == "Not billed: its node stopped reporting." and attempt.error.startswith("Timed out")
    assert flow.states(job) == {"job": "failed", "slow": "failed"}


def test_a_claim_whose_secret_is_gone_ends_refused_and_unbilled(flow, core):
    with core.transaction() as session:
        secrets.set_secret(session, session.get(User, flow.user_id), "TOKEN", "s3cret")
    job = flow.submit(op("uses", env={"TOKEN": "%%secrets.TOKEN%%"}))
    with core.transaction() as session:
        secrets.delete_secret(session, session.get(User, flow.user_id), "TOKEN")
    attempt_id = flow.waiting(job, "uses")
    with core.transaction() as session:
        answer = claim_work(session, session.get(Node, flow.node_id), attempt_id)
    assert answer.order is None and "TOKEN" in answer.error
    attempt = flow.attempts(job, "uses")[0]
    assert attempt.state == AttemptState.FAILED and attempt.cost_note == "Not billed: it was never handed to its node."
    assert flow.states(job) == {"job": "failed", "uses": "failed"}


def test_every_ending_leaves_the_books_balanced(flow, core):
    from scheduler.ledger import check_books

    job = flow.submit(op("a"), op("b", restart_policy={"policy": "on-failure", "restart_tries": 1}))
    flow.run(job, "a")
    flow.run(job, "b", exit_code=1)
    flow.start(job, "b")
    with core.transaction() as session:
        lose_attempts(session, session.get(Node, flow.node_id), "gone")
        cancel_job(session, session.get(Job, job))
        books = check_books(session)
    assert books.balanced, books.problems
    assert flow.states(job)["b"] == OpState.CANCELLED.value
