"""The order waiting work goes in: priority, then fair share, then age.

Fair share is each account's recent GPU time: the GPU-milliseconds of its ended attempts, decayed
so that what was used a half-life ago counts half (Slurm's PriorityDecayHalfLife), plus what its
attempts hold now. Whoever used less goes first; between equals, the older attempt does.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.models import Usage
from scheduler.planner import Want
from scheduler.states import utcnow

# The session info key under which sessions carry the half-life of fair share (scheduler.core).
FAIR_SHARE_HALF_LIFE = "peergrid.fair_share_half_life_s"
DEFAULT_HALF_LIFE_S = 86_400.0


def decayed(value_ms: float, since: datetime, now: datetime, half_life_s: float) -> float:
    """value_ms as of since, decayed to now."""
    elapsed = max(0.0, (now - since).total_seconds())
    if half_life_s <= 0:
        return 0.0
    return value_ms * math.pow(0.5, elapsed / half_life_s)


def record_use(session: Session, owner_id: int, gpu_ms: int, *, half_life_s: float, now: datetime | None = None) -> None:
    """Add an ended attempt's GPU time to its owner's decayed use."""
    if gpu_ms <= 0:
        return
    now = now or utcnow()
    usage = session.get(Usage, owner_id, with_for_update=True)
    if usage is None:
        session.add(Usage(user_id=owner_id, gpu_ms=gpu_ms, as_of=now))
        return
    usage.gpu_ms = int(decayed(usage.gpu_ms, usage.as_of, now, half_life_s)) + gpu_ms
    usage.as_of = now


def recent_use(session: Session, *, half_life_s: float, now: datetime, owners=None) -> dict[int, float]:
    """Each account's use as of now (GPU-milliseconds): its ended attempts', decayed, and what its
    running attempts have held so far; of the accounts owners names, when given."""
    from scheduler.models import Attempt, Job, Op
    from scheduler.states import AttemptState

    connection = session.connection()
    ended = select(Usage.user_id, Usage.gpu_ms, Usage.as_of)
    running = (
        select(Job.owner_id, Attempt.started_at, Attempt.gpus)
        .join(Op, Op.id == Attempt.op_id).join(Job, Job.id == Op.job_id)
        .where(Attempt.state == AttemptState.RUNNING, Attempt.started_at.is_not(None))
    )
    if owners is not None:
        ended = ended.where(Usage.user_id.in_(list(owners)))
        running = running.where(Job.owner_id.in_(list(owners)))
    use = {
        user_id: decayed(gpu_ms, as_of, now, half_life_s)
        for user_id, gpu_ms, as_of in connection.execute(ended)
    }
    running = connection.execute(running)
    for owner_id, started_at, gpus in running:
        held_ms = max(0.0, (now - started_at).total_seconds() * 1000)
        use[owner_id] = use.get(owner_id, 0.0) + held_ms * max(1, len(gpus or ()))
    return use


def rank(wants: list[Want], use_ms: dict[int, float]) -> list[Want]:
    """wants in the order they are placed: higher priority first; within a priority, the account
    that used least goes next, each of its attempts counted as using its whole time limit from the
    moment it is ranked, so that accounts take turns as their use evens out; each account's own
    attempts oldest first."""
    by_priority: dict[int, dict[int, list[Want]]] = defaultdict(lambda: defaultdict(list))
    for want in wants:
        by_priority[want.priority][want.owner_id].append(want)
    ranked: list[Want] = []
    for priority in sorted(by_priority, reverse=True):
        queues = by_priority[priority]
        for queue in queues.values():
            queue.sort(key=lambda w: (w.created_at, w.attempt_id))
        use = {owner: use_ms.get(owner, 0.0) for owner in queues}
        heap = [(use[owner], queue[0].created_at, queue[0].attempt_id, owner) for owner, queue in queues.items()]
        heapq.heapify(heap)
        taken = dict.fromkeys(queues, 0)
        while heap:
            used, _, _, owner = heapq.heappop(heap)
            queue = queues[owner]
            want = queue[taken[owner]]
            ranked.append(want)
            taken[owner] += 1
            if taken[owner] < len(queue):
                used += max(1, want.gpus) * want.timeout_s * 1000
                after = queue[taken[owner]]
                heapq.heappush(heap, (used, after.created_at, after.attempt_id, owner))
    return ranked
