"""The lifecycle vocabulary of jobs, ops, attempts, nodes and payouts, with the moves each allows."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from scheduler.errors import IllegalTransition


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobState(str, enum.Enum):
    QUEUED = "queued"  # set on submit; no op has started yet
    RUNNING = "running"  # set when the first op starts
    SUCCEEDED = "succeeded"  # set when every op succeeded
    FAILED = "failed"  # set when an op failed and nothing more can run
    CANCELLED = "cancelled"  # set by the owner or an admin


class OpState(str, enum.Enum):
    PENDING = "pending"  # set on submit for an op that waits on others
    QUEUED = "queued"  # set when its dependencies are met and an attempt is offered
    RUNNING = "running"  # set when a node reports its attempt started
    SUCCEEDED = "succeeded"  # set when an attempt exits 0
    FAILED = "failed"  # set when the last allowed attempt failed
    SKIPPED = "skipped"  # set when an op it depends on did not succeed
    CANCELLED = "cancelled"  # set when its job is cancelled
    STOPPED = "stopped"  # set when an op flagged stop_if_dependent_stops outlived what it served


class AttemptState(str, enum.Enum):
    QUEUED = "queued"  # set on creation; an offer is on the broker
    CLAIMED = "claimed"  # set by the one node whose claim won
    RUNNING = "running"  # set when that node reports the container started
    SUCCEEDED = "succeeded"  # set when the container exited 0
    FAILED = "failed"  # set when the container exited non-zero or could not run
    LOST = "lost"  # set by the reaper when the node went silent; never billed
    CANCELLED = "cancelled"  # set when its job is cancelled
    STOPPED = "stopped"  # set when its op was stopped because an op it depends on ended
    RELEASED = "released"  # set when its node gave it back unfinished, its worker stopping; never billed


class Ending(str, enum.Enum):
    """How an attempt ended, as whoever ended it saw it; end_attempt decides the rest from this."""

    EXITED = "exited"  # its node reported the container's exit code
    COULD_NOT_RUN = "could_not_run"  # its node reported that the container could not run
    REFUSED = "refused"  # the server would not hand it over after the claim (a secret it needs is gone)
    LOST = "lost"  # its node went silent, restarted or was banned: never billed, tried again for free
    TIMED_OUT = "timed_out"  # its node stopped reporting past the op's time limit: not billed
    CANCELLED = "cancelled"  # its job was cancelled: the time it ran is billed
    STOPPED = "stopped"  # its op was stopped, what it served having ended: the time it ran is billed
    RELEASED = "released"  # its node gave it back, its worker stopping: never billed, offered again at once, not a try


class NodeState(str, enum.Enum):
    ONLINE = "online"  # set on register and on each heartbeat while idle
    BUSY = "busy"  # set on heartbeat while it runs work
    DRAINING = "draining"  # set by the provider: finish what runs, take nothing new
    OFFLINE = "offline"  # set by the reaper when heartbeats stop


class PayoutState(str, enum.Enum):
    REQUESTED = "requested"  # set by the provider
    APPROVED = "approved"  # set by an admin, with the external payment's reference
    REJECTED = "rejected"  # set by an admin, with a reason; the credits go back to earnings


_S = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}

_O = OpState
OP_TRANSITIONS: dict[OpState, frozenset[OpState]] = {
    # pending → failed: its literals could not be resolved
    _O.PENDING: frozenset({_O.QUEUED, _O.SKIPPED, _O.CANCELLED, _O.FAILED}),
    # running → queued: a lost or failed attempt is retried
    _O.QUEUED: frozenset({_O.RUNNING, _O.SUCCEEDED, _O.FAILED, _O.CANCELLED, _O.STOPPED}),
    _O.RUNNING: frozenset({_O.QUEUED, _O.SUCCEEDED, _O.FAILED, _O.CANCELLED, _O.STOPPED}),
    _O.SUCCEEDED: frozenset(),
    _O.FAILED: frozenset(),
    _O.SKIPPED: frozenset(),
    _O.CANCELLED: frozenset(),
    _O.STOPPED: frozenset(),
}

_A = AttemptState
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    _A.QUEUED: frozenset({_A.CLAIMED, _A.CANCELLED}),
    # claimed → failed: the node could not start the container at all
    _A.CLAIMED: frozenset({_A.RUNNING, _A.FAILED, _A.SUCCEEDED, _A.LOST, _A.CANCELLED, _A.STOPPED, _A.RELEASED}),
    _A.RUNNING: frozenset({_A.SUCCEEDED, _A.FAILED, _A.LOST, _A.CANCELLED, _A.STOPPED, _A.RELEASED}),
    _A.SUCCEEDED: frozenset(),
    _A.FAILED: frozenset(),
    _A.LOST: frozenset(),
    _A.CANCELLED: frozenset(),
    _A.STOPPED: frozenset(),
    _A.RELEASED: frozenset(),
}

_N = NodeState
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.ONLINE: frozenset({_N.BUSY, _N.DRAINING, _N.OFFLINE}),
    _N.BUSY: frozenset({_N.ONLINE, _N.DRAINING, _N.OFFLINE}),
    _N.DRAINING: frozenset({_N.ONLINE, _N.OFFLINE}),
    _N.OFFLINE: frozenset({_N.ONLINE, _N.BUSY, _N.DRAINING}),
}

_P = PayoutState
PAYOUT_TRANSITIONS: dict[PayoutState, frozenset[PayoutState]] = {
    _P.REQUESTED: frozenset({_P.APPROVED, _P.REJECTED}),
    _P.APPROVED: frozenset(),
    _P.REJECTED: frozenset(),
}

JOB_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
JOB_UNFINISHED = frozenset(JobState) - JOB_FINISHED
OP_FINISHED = frozenset(
    {OpState.SUCCEEDED, OpState.FAILED, OpState.SKIPPED, OpState.CANCELLED, OpState.STOPPED}
)
# Ops that ended without fault: a job whose ops all did so succeeded.
OP_FINE = frozenset({OpState.SUCCEEDED, OpState.STOPPED})
OP_UNFINISHED = frozenset(OpState) - OP_FINISHED
ATTEMPT_FINISHED = frozenset(
    {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.LOST,
        AttemptState.CANCELLED,
        AttemptState.STOPPED,
        AttemptState.RELEASED,
    }
)
# Attempts a node holds: reports for these are accepted from their node.
ATTEMPT_HELD = frozenset({AttemptState.CLAIMED, AttemptState.RUNNING})

_TABLES: dict[type, dict] = {
    JobState: JOB_TRANSITIONS,
    OpState: OP_TRANSITIONS,
    AttemptState: ATTEMPT_TRANSITIONS,
    NodeState: NODE_TRANSITIONS,
    PayoutState: PAYOUT_TRANSITIONS,
}
_STARTED = {JobState.RUNNING, OpState.RUNNING, AttemptState.RUNNING}
_FINISHED = JOB_FINISHED | OP_FINISHED | ATTEMPT_FINISHED


def can_move(current: enum.Enum, new: enum.Enum) -> bool:
    return new in _TABLES[type(current)][current]


def move(thing: Any, new: enum.Enum, *, now: datetime | None = None) -> None:
    """Move a job, op, attempt, node or payout to a new state, stamping the times that follow from it.

    Raises:
        IllegalTransition: the move is not allowed from the thing's current state.
    """
    current = thing.state
    if current == new:
        return
    if not can_move(current, new):
        raise IllegalTransition(
            f"{type(thing).__name__} {getattr(thing, 'id', '?')} cannot go from "
            f"{current.value} to {new.value}."
        )
    now = now or utcnow()
    thing.state = new
    if new in _STARTED and hasattr(thing, "started_at") and thing.started_at is None:
        thing.started_at = now
    if new in _FINISHED and hasattr(thing, "finished_at"):
        thing.finished_at = now
