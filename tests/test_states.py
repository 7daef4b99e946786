import pytest

from scheduler.errors import IllegalTransition
from scheduler.models import Attempt, Job, Payout
from scheduler.states import (
    ATTEMPT_TRANSITIONS,
    JOB_TRANSITIONS,
    NODE_TRANSITIONS,
    OP_TRANSITIONS,
    PAYOUT_TRANSITIONS,
    AttemptState,
    JobState,
    PayoutState,
    move,
)


@pytest.mark.parametrize(
    "table", [JOB_TRANSITIONS, OP_TRANSITIONS, ATTEMPT_TRANSITIONS, NODE_TRANSITIONS, PAYOUT_TRANSITIONS]
)
def test_every_state_has_a_row(table):
    enum_cls = type(next(iter(table)))
    assert set(table) == set(enum_cls)


def test_move_stamps_start_and_end():
    job = Job(state=JobState.QUEUED)
    move(job, JobState.RUNNING)
    assert job.started_at is not None and job.finished_at is None
    move(job, JobState.SUCCEEDED)
    assert job.finished_at is not None and job.finished_at >= job.started_at


def test_a_finished_attempt_cannot_run_again():
    attempt = Attempt(state=AttemptState.SUCCEEDED)
    with pytest.raises(IllegalTransition, match="cannot go from succeeded to running"):
        move(attempt, AttemptState.RUNNING)
    assert attempt.state == AttemptState.SUCCEEDED


def test_a_payout_is_decided_once():
    payout = Payout(state=PayoutState.REQUESTED)
    move(payout, PayoutState.APPROVED)
    assert payout.state == PayoutState.APPROVED
    for later in (PayoutState.REJECTED, PayoutState.REQUESTED):
        with pytest.raises(IllegalTransition, match=f"cannot go from approved to {later.value}"):
            move(payout, later)
    rejected = Payout(state=PayoutState.REJECTED)
    with pytest.raises(IllegalTransition, match="cannot go from rejected to approved"):
        move(rejected, PayoutState.APPROVED)
    assert rejected.state == PayoutState.REJECTED
