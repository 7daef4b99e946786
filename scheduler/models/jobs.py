"""Jobs, their ops, the attempts at running each op, and what those attempts printed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models.base import Base, state_column
from scheduler.models.markets import Market
from scheduler.models.nodes import Node
from scheduler.states import AttemptState, JobState, OpState, utcnow


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        # One job per person and Idempotency-Key, whoever commits first; a unique index rather than
        # a table constraint, so that SQLite adds it without copying the table.
        Index("uq_jobs_owner_id_idempotency_key", "owner_id", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[JobState] = mapped_column(state_column(JobState), default=JobState.QUEUED, index=True)
    # The definition as submitted, kept unchanged.
    definition: Mapped[dict[str, Any]]
    # The most the job can cost, reserved at submit; micro-credits.
    max_cost: Mapped[int] = mapped_column(default=0)
    # Micro-credits held in the owner's escrow for this job now: what was reserved, less what was
    # charged and what was returned. Zero once the job has ended.
    reserved: Mapped[int] = mapped_column(default=0)
    cost: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The Idempotency-Key its submit carried, and the SHA-256 of that request (definition and
    # market): a repeat with the key answers this job; one with another request is refused.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_digest: Mapped[str | None] = mapped_column(String(64))
    # Higher runs first (capped per person by admins); 0 unless the submit asked.
    priority: Mapped[int] = mapped_column(default=0)
    # The array it belongs to, and its index there (PEERGRID_ARRAY_INDEX, %%array.index%%).
    array_id: Mapped[int | None] = mapped_column(ForeignKey("job_arrays.id", ondelete="CASCADE"), index=True)
    array_index: Mapped[int | None]

    ops: Mapped[list["Op"]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Op.position"
    )


class Op(Base):
    """One op of a job, as placed: its resolved container spec and where it stands."""

    __tablename__ = "ops"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # The op's id in the definition.
    key: Mapped[str] = mapped_column(String(200))
    position: Mapped[int]
    type: Mapped[str] = mapped_column(String(50))
    group: Mapped[str | None] = mapped_column(String(200))
    # Ops that must succeed first (depends_on, plus the creators of volumes it uses). Those of
    # earlier groups must have ended first too, whatever their outcome: which they are follows from
    # the ops' groups and positions (scheduler.jobdef.group_ranks).
    depends_on: Mapped[list[Any]] = mapped_column(default=list)
    # Starts once what it depends on has started, and is stopped when that ends.
    stop_if_dependent_stops: Mapped[bool] = mapped_column(default=False)
    # Results regexes: name → {"regex", "log_types"}.
    result_rules: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The container spec to run: image, cmd, entrypoint, env, work_dir, ... Literals in it are
    # resolved when the op is queued.
    spec: Mapped[dict[str, Any]]
    market_id: Mapped[int] = mapped_column(ForeignKey("markets.id"))
    state: Mapped[OpState] = mapped_column(state_column(OpState), default=OpState.PENDING)
    timeout_s: Mapped[int]
    max_attempts: Mapped[int] = mapped_column(default=1)
    exit_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The label of each exposed port's URL, by port: chosen once, so the URL is known before the op
    # runs (%%ops.ID.endpoint.PORT%% resolves to it) and stays the same when the op is placed again.
    endpoint_labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Whether it exposes ports (a service), so that only a node that serves endpoints is given it.
    exposes: Mapped[bool] = mapped_column(default=False, server_default=false())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="ops")
    market: Mapped[Market] = relationship()
    attempts: Mapped[list["Attempt"]] = relationship(
        back_populates="op", cascade="all, delete-orphan", order_by="Attempt.number"
    )


class Attempt(Base):
    """One try at running an op on one node; its id fences every report about it."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("op_id", "number"),
        Index("ix_attempts_state_offered_at", "state", "offered_at"),
        # A hand-off reads the first in line (scheduler.placing.hand_off).
        Index("ix_attempts_state_line_position", "state", "line_position"),
        # The overview's utilisation chart reads the attempts that ended in the last hours.
        Index("ix_attempts_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    op_id: Mapped[int] = mapped_column(ForeignKey("ops.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(default=1)
    state: Mapped[AttemptState] = mapped_column(state_column(AttemptState), default=AttemptState.QUEUED)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    # GPU UUIDs the attempt holds on its node.
    gpus: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When its offer was last staged: it goes to the broker after the transaction that staged it
    # commits; a placement still unclaimed reoffer_after_s later (lost, never sent, or untaken) is withdrawn.
    offered_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the scheduler placed it while it waits for its node to claim it (scheduler.placing): the
    # node and the GPU UUIDs it is to run on, and when; cleared when an offer is withdrawn.
    placed_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    # The node it must run on, which holds the volumes it uses; known when it is made.
    pinned_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    placed_gpus: Mapped[list[Any]] = mapped_column(default=list)
    placed_at: Mapped[datetime | None]
    # Why it waits and where it stands, as the last pass found it ("3rd in line for gpu-80gb").
    waiting: Mapped[str | None] = mapped_column(Text)
    # Its place in line for its market as the last pass found it (1 goes next); None once placed.
    line_position: Mapped[int | None]
    # GPUs held for it on a node from a time (a reservation), when it is first in line and fits nowhere.
    reserved_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    reserved_from: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    exit_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[int] = mapped_column(default=0)
    # How the cost was reached, in words: seconds × GPUs × price, and the fee.
    cost_note: Mapped[str | None] = mapped_column(Text)
    # Highest log sequence number received, so a re-sent batch is not stored twice.
    last_log_seq: Mapped[int] = mapped_column(default=0)
    # Bytes of log text stored for it (UTF-8), counted against the per-attempt limit.
    log_bytes: Mapped[int] = mapped_column(default=0)
    # Set once its log reached that limit: later lines are discarded.
    log_full: Mapped[bool] = mapped_column(default=False)
    # How often its node restarted its container in place (restart_policy), and whether it is now.
    restarts: Mapped[int] = mapped_column(default=0)
    restarting: Mapped[bool] = mapped_column(default=False)
    # Since when it is ready (a service: every endpoint open, forwarded and healthy); None while not.
    ready_at: Mapped[datetime | None]

    op: Mapped[Op] = relationship(back_populates="attempts")
    node: Mapped[Node | None] = relationship(foreign_keys=[node_id])


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (
        UniqueConstraint("attempt_id", "seq"),
        Index("ix_log_lines_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    op_id: Mapped[int] = mapped_column(ForeignKey("ops.id", ondelete="CASCADE"), index=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"))
    seq: Mapped[int]
    # stdout, stderr, or system for what peergrid itself says about the run.
    stream: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)
    logged_at: Mapped[datetime] = mapped_column(default=utcnow)
