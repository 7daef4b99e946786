"""Job priorities: a job asks for one at submit, within the cap an admin set its owner or the cluster's.

Higher runs first. 0 is every job's default; below 0 is a nice job, which lets others go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.errors import Conflict, PeergridError, PriorityRefused
from scheduler.states import JobState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from scheduler.models import Job, User

# The cluster's default cap and floor (PEERGRID_MAX_PRIORITY, PEERGRID_MIN_PRIORITY).
DEFAULT_MAX_PRIORITY = 10
DEFAULT_MIN_PRIORITY = -100
# What even an admin may ask for, either way: far past any sensible cap, and within any store's integer.
PRIORITY_LIMIT = 1_000_000


@dataclass(frozen=True)
class PriorityBounds:
    """The cluster's rule: the cap of a person an admin set none for, and the lowest anyone may ask."""

    default_cap: int = DEFAULT_MAX_PRIORITY
    floor: int = DEFAULT_MIN_PRIORITY


def read_priority(raw: object) -> int:
    """A priority as a request carries it (text or a number); none or empty is 0.

    Raises:
        PriorityRefused: it is not a whole number.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    raise PriorityRefused(f"A priority is a whole number, like 5 or -2 (higher runs first), not {raw!r}.")


def priority_cap(user: User, bounds: PriorityBounds) -> int:
    """The highest priority user may ask for: their own cap, else the cluster's; an admin's is unbounded."""
    if user.is_admin:
        return PRIORITY_LIMIT
    return user.max_priority if user.max_priority is not None else bounds.default_cap


def check_priority(user: User, priority: int, bounds: PriorityBounds) -> int:
    """Return priority when user may ask for it.

    Raises:
        PriorityRefused: it is above user's cap or below the floor.
    """
    floor = -PRIORITY_LIMIT if user.is_admin else bounds.floor
    if priority < floor:
        raise PriorityRefused(f"Priority {priority} is below the lowest allowed, {floor}; ask for {floor} or more.")
    cap = priority_cap(user, bounds)
    if priority > cap:
        if cap >= PRIORITY_LIMIT:
            raise PriorityRefused(f"Priority {priority} is above the highest allowed, {cap}; ask for {cap} or less.")
        whose = "an admin set you" if user.max_priority is not None else "the cluster's default"
        raise PriorityRefused(
            f"Your priority cap is {cap} ({whose}), so priority {priority} cannot be asked for: "
            f"submit with a priority of {cap} or less, or ask an admin to raise your cap."
        )
    return priority


def set_max_priority(session: Session, user: User, cap: int | None) -> None:
    """Set the highest priority user may ask for; None gives them the cluster's default cap again.

    Raises:
        PeergridError: cap is not a whole number within bounds.
    """
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= PRIORITY_LIMIT):
        raise PeergridError(
            f"A priority cap is a whole number from 0 to {PRIORITY_LIMIT}, or none for the cluster's default."
        )
    user.max_priority = cap
    session.flush()


def set_job_priority(session: Session, job: Job, priority: int) -> None:
    """Change a waiting job's priority (an admin's move: no cap applies); the next pass orders by it.

    Raises:
        PriorityRefused: priority is out of bounds.
        Conflict: the job no longer waits.
    """
    from scheduler.placing import want_pass

    if not -PRIORITY_LIMIT <= priority <= PRIORITY_LIMIT:
        raise PriorityRefused(f"A priority is a whole number from {-PRIORITY_LIMIT} to {PRIORITY_LIMIT}.")
    if job.state != JobState.QUEUED:
        raise Conflict(f"Job {job.id} is {job.state.value}: only a waiting (queued) job's priority can change.")
    job.priority = priority
    session.flush()
    want_pass(session)
