"""Job arrays: many jobs of one definition, each with its index, submitted, watched and cancelled together.

An array of 10,000 jobs is one request, so it is stored in bulk: the definition is read and planned
once, one escrow covers every job, and jobs, ops, attempts and events are written with a few
multi-row INSERTs instead of 10,000 units of work. Cancelling one is as bulk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from sqlalchemy import and_, distinct, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from protocol.names import op_slug
from scheduler import ledger
from scheduler.array_spec import ArraySpec
from scheduler.credits import credits
from scheduler.endpoints import any_node_serves_endpoints
from scheduler.errors import Conflict, NotFound, PeergridError
from scheduler.jobdef import CREATE_VOLUME, RUN, JobDefinition, group_ranks
from scheduler.jobs import check_definition, check_idempotency_key, request_digest
from scheduler.literals import Scope, UnresolvedLiteral, fill_array_index, has_literals, resolve_args
from scheduler.models import Attempt, Endpoint, Job, JobArray, JobEvent, Op, User
from scheduler.orchestration import advance, cancel_job, op_columns
from scheduler.placement import PlannedOp, plan_ops
from scheduler.placing import want_pass
from scheduler.priorities import PriorityBounds, check_priority
from scheduler.quotas import check_waiting_quota
from scheduler.references import LITERAL
from scheduler.states import (
    ATTEMPT_HELD,
    JOB_FINISHED,
    AttemptState,
    JobState,
    OpState,
    can_move,
    utcnow,
)

INDEX_ENV = "PEERGRID_ARRAY_INDEX"
# Job states in the order a progress line and bar show them.
SHOWN_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.RUNNING, JobState.QUEUED)


@dataclass(frozen=True)
class ArraySubmission:
    """What an array submit came to: the array, its most cost in all, and whether an earlier submit
    with the same Idempotency-Key had made it."""

    array: JobArray
    max_cost: int
    repeated: bool = False


def submit_array(
    session: Session,
    owner: User,
    document: object,
    spec: ArraySpec,
    *,
    market_slug: str | None = None,
    default_timeout_s: int,
    max_ops: int | None = None,
    max_array_ops: int,
    key: str | None = None,
    priority: int = 0,
    priorities: PriorityBounds = PriorityBounds(),
    now: datetime | None = None,
) -> ArraySubmission:
    """Validate a definition once and store an array of spec.size jobs of it, each knowing its index
    (PEERGRID_ARRAY_INDEX in every op's env, %%array.index%% in its literals); one escrow reserves what
    they may cost in all. Nothing is stored, and no credit moves, when any of it is refused.

    Raises:
        InvalidDefinition: the definition has problems, all of them listed.
        NoMarket: an op needs hardware no market serves.
        PeergridError: the array has more ops in all than max_array_ops, or the key is malformed.
        InsufficientCredits: owner's available credits do not cover the whole array, with the shortfall.
        Conflict: owner used the key for a different request.
        PriorityRefused: owner may not ask for this priority.
        QuotaExceeded: owner's quota of waiting jobs has no room for the whole array.
    """
    now = now or utcnow()
    digest = None
    if key is not None:
        key = check_idempotency_key(key)
        digest = request_digest({"array": spec.text, "definition": document}, market_slug, priority)
        earlier = _repeat_of(session, owner, key, digest)
        if earlier is not None:
            return earlier
    check_priority(owner, priority, priorities)
    definition = check_definition(session, owner, document, max_ops=max_ops, in_array=True)
    if len(definition.ops) * spec.size > max_array_ops:
        raise PeergridError(
            f"This array would hold {len(definition.ops) * spec.size:,} ops ({spec.size:,} jobs of "
            f"{len(definition.ops)}); this server stores at most {max_array_ops:,} in one array. Submit fewer "
            "jobs at once, or ask its operator to raise PEERGRID_MAX_ARRAY_OPS."
        )
    planned = plan_ops(session, definition, market_slug=market_slug, default_timeout_s=default_timeout_s)
    per_job = sum(p.max_cost for p in planned)
    what = f"This array of {spec.size:,} jobs at their longest"
    # Refused here, before anything is written, when a quota has no room for every job or the
    # credits do not cover them.
    check_waiting_quota(session, owner, {p.market for p in planned}, adding=spec.size)
    ledger.check_available(session, owner.id, per_job * spec.size, what=what)
    try:
        with session.begin_nested():
            array = _store(session, owner, document, definition, planned, spec, per_job, what=what,
                           key=key, digest=digest, priority=priority, now=now)
    except IntegrityError:  # a concurrent submit with the key committed first
        earlier = _repeat_of(session, owner, key, digest) if key is not None else None
        if earlier is None:
            raise
        return earlier
    return ArraySubmission(array, per_job * spec.size)


def _repeat_of(session: Session, owner: User, key: str, digest: str) -> ArraySubmission | None:
    """The array an earlier submit with this key made, or None; Conflict when it asked for something else."""
    job = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key))
    if job is None:
        return None
    if job.array_id is None or job.request_digest != digest:
        made = f"array {job.array_id}" if job.array_id is not None else f"job {job.id}"
        raise Conflict(f"The Idempotency-Key {key!r} was used for a different request, which made {made}; "
                       "send a new key with a new array.")
    array = session.get(JobArray, job.array_id)
    total = session.scalar(select(func.coalesce(func.sum(Job.max_cost), 0)).where(Job.array_id == array.id))
    return ArraySubmission(array, int(total or 0), repeated=True)


def _store(
    session: Session, owner: User, document: object, definition: JobDefinition, planned: list[PlannedOp],
    spec: ArraySpec, per_job: int, *, what: str, key: str | None, digest: str | None, priority: int,
    now: datetime,
) -> JobArray:
    """Write the array, its escrow, and its jobs, ops, first attempts and events, in bulk."""
    array = JobArray(owner_id=owner.id, size=spec.size, max_running=spec.max_running, created_at=now)
    session.add(array)
    session.flush()
    ledger.escrow_many(
        session, owner.id, per_job * spec.size, key=f"escrow:array:{array.id}", what=what,
        memo=f"Reserved for array {array.id}: {spec.size:,} jobs of at most {credits(per_job)} credits each.",
    )
    job_rows = [
        dict(owner_id=owner.id, definition=document, state=JobState.QUEUED, created_at=now, max_cost=per_job,
             reserved=per_job, cost=0, priority=priority, array_id=array.id, array_index=index,
             idempotency_key=None, request_digest=None)
        for index in spec.indices
    ]
    if key is not None:  # the first job holds the key, as a lone job does
        job_rows[0].update(idempotency_key=key, request_digest=digest)
    _insert_many(session, Job, job_rows)
    job_ids = list(session.scalars(select(Job.id).where(Job.array_id == array.id).order_by(Job.array_index)))

    creators = {p.definition.args.get("name"): p.definition.key for p in planned if p.definition.type == CREATE_VOLUME}
    templates = [{**op_columns(p, creators), "market_id": p.market.id} for p in planned]
    rank = group_ranks((p.definition.key, p.definition.group) for p in planned)
    # The ops that start at once: in the first group, waiting on nothing (as advance finds them).
    starting = [i for i, t in enumerate(templates) if rank[t["key"]] == 0 and not t["depends_on"]]
    variables = definition.variables
    hosts = {t["key"]: op_slug(t["key"]) for t in templates}
    probe = Scope(job_id=0, hosts=hosts, variables=variables, version=definition.version)
    bulk = all(_resolvable_in_bulk(templates[i], probe) for i in starting)

    op_rows: list[dict] = []
    resolved: list[bool] = []  # for each of op_rows: whether literals were resolved in it
    for job_id, index in zip(job_ids, spec.indices):
        scope = None
        for i, template in enumerate(templates):
            op_spec = _indexed_spec(template, index)
            queued = bulk and i in starting
            literal = queued and has_literals(op_spec)
            if literal:
                scope = scope or Scope(job_id=job_id, hosts=hosts, variables=variables, version=definition.version)
                op_spec = resolve_args(op_spec, scope)
            op_rows.append({**template, "job_id": job_id, "spec": op_spec,
                            "state": OpState.QUEUED if queued else OpState.PENDING})
            resolved.append(literal)
    _insert_many(session, Op, op_rows)
    stored = dict(((job_id, key), op_id) for op_id, job_id, key in session.execute(
        select(Op.id, Op.job_id, Op.key).join(Job, Job.id == Op.job_id).where(Job.array_id == array.id)
    ))
    op_ids = [stored[row["job_id"], row["key"]] for row in op_rows]

    events = [
        dict(job_id=job_id, op_id=None, attempt_id=None, kind="submitted", created_at=now,
             message=f"Submitted as job {index} of array {array.id}, with {len(templates)} op(s); "
                     f"{credits(per_job)} credits of the array's escrow reserved for its longest run.")
        for job_id, index in zip(job_ids, spec.indices)
    ]
    events += [dict(job_id=row["job_id"], op_id=op_id, attempt_id=None, kind="resolved", created_at=now,
                    message=f"{row['key']}: literals resolved.")
               for op_id, row, literal in zip(op_ids, op_rows, resolved) if literal]
    queued = [(op_id, row) for op_id, row in zip(op_ids, op_rows) if row["state"] == OpState.QUEUED]
    events += _first_attempts(session, array.id, queued, planned, now=now)
    _insert_many(session, JobEvent, events)
    if not bulk:
        # Some op that starts at once reads what only a stored job has (an endpoint's URL): each job
        # advances as a lone one would, slower but the same.
        for job in session.scalars(select(Job).where(Job.id.in_(job_ids)).options(selectinload(Job.ops))):
            advance(session, job, now=now)
    return array


def _indexed_spec(template: dict, index: int) -> dict:
    """An op's spec for the array's job of this index: %%array.index%% filled in, and PEERGRID_ARRAY_INDEX set."""
    spec = fill_array_index(template["spec"], index)
    if template["type"] == RUN:
        spec = {**spec, "env": {**(spec.get("env") or {}), INDEX_ENV: str(index)}}
    return spec


def _resolvable_in_bulk(template: dict, scope: Scope) -> bool:
    """Whether an op's literals resolve from what is known of its job before it is stored, its id
    aside: globals, variables, ops' host names, secrets (left for the claim). One that reads an
    endpoint's URL needs the stored op, and one that cannot resolve yet (a result) fails the op:
    those are left to advance, which does both as for a lone job."""
    spec = _indexed_spec(template, 0)
    if not has_literals(spec):
        return True
    try:
        resolve_args(spec, scope)
    except UnresolvedLiteral:
        return False
    return True


def _first_attempts(
    session: Session, array_id: int, queued: list[tuple[int, dict]], planned: list[PlannedOp], *, now: datetime
) -> list[dict]:
    """Make the first attempt of each queued op (id, row) as orchestration.new_attempts does, in
    one INSERT, and ask for a placement pass. Return their events' rows."""
    if not queued:
        return []
    rows = [dict(op_id=op_id, number=1, state=AttemptState.QUEUED, created_at=now, offered_at=now, gpus=[],
                 placed_gpus=[]) for op_id, _ in queued]
    _insert_many(session, Attempt, rows)
    in_array = select(Op.id).join(Job, Job.id == Op.job_id).where(Job.array_id == array_id)
    made = dict(session.execute(select(Attempt.op_id, Attempt.id).where(Attempt.op_id.in_(in_array))).all())
    attempt_ids = [made[op_id] for op_id, _ in queued]
    markets = {p.definition.key: p.market for p in planned}
    want_pass(session)
    events = []
    servable = None
    for attempt_id, (op_id, row) in zip(attempt_ids, queued):
        market = markets[row["key"]]
        events.append(dict(job_id=row["job_id"], op_id=op_id, attempt_id=attempt_id, kind="offered", created_at=now,
                           message=f"{row['key']}: attempt 1 of {row['max_attempts']} offered on market {market.slug}."))
        if row["spec"].get("expose"):
            servable = any_node_serves_endpoints(session) if servable is None else servable
            if not servable:
                events.append(dict(
                    job_id=row["job_id"], op_id=op_id, attempt_id=attempt_id, kind="waiting", created_at=now,
                    message=f"{row['key']}: no node up now can serve the ports it exposes (each runs its containers "
                            "without a network, --job-network none); it waits for one that can.",
                ))
    return events


# -- reading --------------------------------------------------------------------------------


def array_for(session: Session, user: User, array_id: int) -> JobArray:
    """Return an array its owner (or an admin) may see.

    Raises:
        NotFound: no such array, or it is someone else's.
    """
    array = session.get(JobArray, array_id)
    if array is None or (array.owner_id != user.id and not user.is_admin):
        raise NotFound(f"There is no array {array_id}.")
    return array


@dataclass(frozen=True)
class ArrayStatus:
    """How an array stands: how many of its jobs are in each state, and what they cost."""

    array: JobArray
    counts: dict[str, int]
    max_cost: int
    cost: int

    @property
    def done(self) -> int:
        return sum(self.counts[s.value] for s in JOB_FINISHED)

    @property
    def state(self) -> str:
        """queued or running while any job is unfinished; then succeeded, cancelled or failed."""
        c = self.counts
        if self.done < self.array.size:
            return JobState.QUEUED.value if c[JobState.QUEUED.value] == self.array.size else JobState.RUNNING.value
        if c[JobState.SUCCEEDED.value] == self.array.size:
            return JobState.SUCCEEDED.value
        return JobState.CANCELLED.value if c[JobState.CANCELLED.value] and not c[JobState.FAILED.value] else JobState.FAILED.value

    @property
    def progress(self) -> str:
        """One line: `37/100 done: 30 succeeded, 7 failed; 8 running; 55 queued`."""
        c = self.counts
        ended = ", ".join(f"{c[s.value]} {s.value}" for s in SHOWN_STATES[:3] if c[s.value])
        line = f"{self.done}/{self.array.size} done" + (f": {ended}" if ended else "")
        return "; ".join([line, *(f"{c[s.value]} {s.value}" for s in SHOWN_STATES[3:] if c[s.value])])


def array_status(session: Session, array: JobArray) -> ArrayStatus:
    counts = {s.value: 0 for s in JobState}
    max_cost = cost = 0
    for state, n, most, spent in session.execute(
        select(Job.state, func.count(Job.id), func.coalesce(func.sum(Job.max_cost), 0), func.coalesce(func.sum(Job.cost), 0))
        .where(Job.array_id == array.id).group_by(Job.state)
    ):
        counts[state.value] = n
        max_cost += int(most)
        cost += int(spent)
    return ArrayStatus(array, counts, max_cost, cost)


def array_job_ids(session: Session, array: JobArray) -> list[int]:
    """The ids of the array's jobs, in the order of their indices."""
    return list(session.scalars(select(Job.id).where(Job.array_id == array.id).order_by(Job.array_index)))


def array_jobs(session: Session, array: JobArray, *, page: int = 1, per_page: int = 100) -> list[Job]:
    """One page of the array's jobs, in the order of their indices (without their definitions)."""
    return list(session.scalars(
        select(Job).where(Job.array_id == array.id).order_by(Job.array_index)
        .limit(per_page).offset((max(1, page) - 1) * per_page)
    ))


def running_counts(session: Session, array_ids: Iterable[int]) -> dict[int, int]:
    """For each array, how many of its jobs have an attempt a node holds now (claimed or running) or
    is placed on and yet to claim; arrays with none are left out. What a placement pass holds to an
    array's max_running (scheduler.placing)."""
    ids = list(array_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Job.array_id, func.count(distinct(Job.id)))
        .join(Op, Op.job_id == Job.id).join(Attempt, Attempt.op_id == Op.id)
        .where(Job.array_id.in_(ids), or_(
            Attempt.state.in_(ATTEMPT_HELD),
            and_(Attempt.state == AttemptState.QUEUED, Attempt.placed_node_id.is_not(None)),
        ))
        .group_by(Job.array_id)
    )
    return {array_id: n for array_id, n in rows}


# -- cancelling -----------------------------------------------------------------------------


def cancel_array(session: Session, array: JobArray, *, by: str = "its owner", now: datetime | None = None) -> int:
    """Cancel every unfinished job of the array; return how many. Jobs a node runs now end as
    cancel_job ends them (billed for what ran, their containers stopped at the node's next report);
    the rest, which never started, end in bulk, and what they reserved returns in one movement."""
    now = now or utcnow()
    ledger.lock_funds(session, array.owner_id)
    in_array = select(Job.id).where(Job.array_id == array.id)
    held = set(session.scalars(
        select(Op.job_id).distinct().join(Attempt, Attempt.op_id == Op.id)
        .where(Op.job_id.in_(in_array), Attempt.state.in_(ATTEMPT_HELD))
    ))
    for job in session.scalars(select(Job).where(Job.id.in_(held)).options(selectinload(Job.ops))):
        cancel_job(session, job, by=by, now=now)
    cancellable = [s for s in JobState if can_move(s, JobState.CANCELLED)]
    rows = session.execute(
        select(Job.id, Job.reserved).where(Job.array_id == array.id, Job.state.in_(cancellable), Job.id.not_in(held))
    ).all()
    if not rows:
        return len(held)
    ids = [job_id for job_id, _ in rows]
    why = f"Cancelled by {by}."
    quiet = {"synchronize_session": False}
    for chunk in _chunks(ids):
        ops = select(Op.id).where(Op.job_id.in_(chunk))
        attempts = select(Attempt.id).where(Attempt.op_id.in_(ops))
        session.execute(
            update(Attempt).where(
                Attempt.op_id.in_(ops),
                Attempt.state.in_([s for s in AttemptState if can_move(s, AttemptState.CANCELLED) and s not in ATTEMPT_HELD]),
            ).values(state=AttemptState.CANCELLED, finished_at=now, error=why,
                     cost_note="Not billed: the container never started.").execution_options(**quiet)
        )
        session.execute(update(Endpoint).where(Endpoint.attempt_id.in_(attempts), Endpoint.closed_at.is_(None))
                        .values(closed_at=now).execution_options(**quiet))
        session.execute(
            update(Op).where(Op.job_id.in_(chunk), Op.state.in_([s for s in OpState if can_move(s, OpState.CANCELLED)]))
            .values(state=OpState.CANCELLED, finished_at=now, error=why).execution_options(**quiet)
        )
        session.execute(update(Job).where(Job.id.in_(chunk)).values(state=JobState.CANCELLED, finished_at=now, reserved=0)
                        .execution_options(**quiet))
    returned = sum(reserved for _, reserved in rows)
    ledger.release_many(
        session, array.owner_id, returned, key=f"release:array:{array.id}:{ids[0]}:{len(ids)}:{now.timestamp()}",
        memo=f"Array {array.id}: {len(ids):,} jobs cancelled; their unused reservations return.",
    )
    events = [dict(job_id=job_id, op_id=None, attempt_id=None, kind="cancelled", message=why, created_at=now)
              for job_id in ids]
    events += [dict(job_id=job_id, op_id=None, attempt_id=None, kind="released", created_at=now,
                    message=f"{credits(reserved)} unused credits returned.") for job_id, reserved in rows if reserved]
    _insert_many(session, JobEvent, events)
    # Loaded jobs of the array, if any, read their new state from the store.
    for job in [o for o in session.identity_map.values() if isinstance(o, Job) and o.array_id == array.id]:
        session.expire(job)
    want_pass(session)
    return len(held) + len(ids)


# Rows per multi-row INSERT: psycopg parses each statement's placeholders again unless it is short,
# and on PostgreSQL 100 rows a statement measured faster than 25, 250 or SQLAlchemy's 1,000.
_ROWS_PER_INSERT = 100


def _insert_many(session: Session, model: type, rows: list[dict]) -> None:
    """Insert rows in few statements. Asking for RETURNING makes SQLAlchemy batch them into
    multi-row INSERTs (insertmanyvalues) on every store, where a plain executemany is one statement
    a row on PostgreSQL's driver. What comes back is not read: the order of its rows is not
    promised, so callers read ids back by what the rows hold."""
    if rows:
        statement = insert(model).returning(model.id).execution_options(insertmanyvalues_page_size=_ROWS_PER_INSERT)
        session.execute(statement, rows).all()


def _chunks(ids: list[int], size: int = 500):
    """ids in pieces small enough for an IN (...) on every store."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
