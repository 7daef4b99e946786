"""The token ledger: every movement of credits is one transaction whose postings sum to zero.

Amounts are integer micro-credits (1 credit = 1,000,000). Each business event has one idempotency
key (`escrow:job:7`, `settle:attempt:42`, ...), so a retried report never moves credits twice.
Cached balances change in the same transaction as their postings, with the accounts locked; the
store refuses a person's balance below zero.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from scheduler.credits import MICRO, credits, parse_credits  # noqa: F401  (the ledger's words for amounts)
from scheduler.errors import Conflict, NotFound, PeergridError
from scheduler.models import (
    Account,
    AccountKind,
    Attempt,
    Job,
    LedgerTransaction,
    Payout,
    PayoutState,
    Posting,
    User,
)
from scheduler.placement import billed_units, cost_of, unit_name
from scheduler.states import JOB_FINISHED, can_move, move, utcnow

K = AccountKind


class InsufficientCredits(PeergridError):
    """Raised when an account holds less than a movement needs."""

    def __init__(self, needed: int, available: int, what: str):
        self.needed = needed
        self.available = available
        self.shortfall = needed - available
        super().__init__(
            f"{what} needs {credits(needed)} credits; {credits(available)} are available "
            f"(short by {credits(self.shortfall)})."
        )


def account(session: Session, kind: AccountKind, user_id: int | None = None) -> Account:
    """The account of that kind (a user's, or the platform's), made on first use."""
    if (kind in (K.ISSUANCE, K.FEES, K.PAID_OUT)) != (user_id is None):
        raise ValueError(f"{kind.value} accounts belong to {'the platform' if user_id is None else 'a user'}")
    # Account rows never vanish, so a session keeps those it has read: a submit or a settlement asks
    # for the same accounts several times. (One made in a transaction that rolled back is no longer
    # persistent, and is read again.)
    known = session.info.setdefault("ledger_accounts", {})
    found = known.get((kind, user_id))
    if found is not None and inspect(found).persistent:
        return found
    query = select(Account).where(Account.kind == kind, Account.user_id.is_(None) if user_id is None else Account.user_id == user_id)
    found = session.scalar(query)
    if found is not None:
        known[kind, user_id] = found
        return found
    try:
        with session.begin_nested():
            found = Account(kind=kind, user_id=user_id, balance=0)
            session.add(found)
    except IntegrityError:  # made at the same moment by someone else
        found = session.scalar(query)
    return found


def post(
    session: Session,
    key: str,
    kind: str,
    entries: list[tuple[Account, int]],
    *,
    memo: str = "",
    job_id: int | None = None,
    attempt_id: int | None = None,
    payout_id: int | None = None,
    actor_id: int | None = None,
    now: datetime | None = None,
) -> LedgerTransaction | None:
    """Record one movement; return it, or None when its key was posted already (a retry).

    Raises:
        ValueError: the entries do not sum to zero.
        IntegrityError: an account would go below zero (the store refuses it).
    """
    entries = [(acct, amount) for acct, amount in entries if amount != 0]
    if sum(amount for _, amount in entries) != 0:
        raise ValueError(f"postings of {key} do not sum to zero")
    if session.scalar(select(LedgerTransaction.id).where(LedgerTransaction.key == key)) is not None:
        return None
    try:
        with session.begin_nested():
            txn = LedgerTransaction(
                key=key, kind=kind, memo=memo, job_id=job_id, attempt_id=attempt_id, payout_id=payout_id,
                actor_id=actor_id, created_at=now or utcnow(),
            )
            session.add(txn)
            session.flush()
            # Lock the accounts in a fixed order, so two movements never wait on each other in a circle.
            ids = sorted({acct.id for acct, _ in entries})
            session.execute(select(Account.id).where(Account.id.in_(ids)).order_by(Account.id).with_for_update())
            session.add_all(Posting(transaction_id=txn.id, account_id=acct.id, amount=amount) for acct, amount in entries)
            for acct, amount in sorted(entries, key=lambda e: e[0].id):
                balance = session.execute(
                    update(Account).where(Account.id == acct.id).values(balance=Account.balance + amount)
                    .returning(Account.balance).execution_options(synchronize_session=False)
                ).scalar_one()
                set_committed_value(acct, "balance", balance)
            session.flush()
    except IntegrityError:
        # Either a concurrent caller posted this event first (then it is done), or an account
        # would have gone below zero (then the caller must hear of it).
        if session.scalar(select(LedgerTransaction.id).where(LedgerTransaction.key == key)) is not None:
            return None
        raise
    return txn


def balances(session: Session, user_id: int) -> dict[str, int]:
    rows = dict(session.execute(select(Account.kind, Account.balance).where(Account.user_id == user_id)).all())
    return {kind.value: rows.get(kind, 0) for kind in (K.AVAILABLE, K.ESCROW, K.EARNINGS, K.PAYOUT_PENDING)}


def lock_funds(session: Session, user_id: int) -> None:
    """Lock a person's available and escrow accounts, first and together.

    Every transaction that moves a person's spendable credits (submit, extend, settle, release) takes
    this lock before any other ledger row, so two of them can never wait on each other in a circle.
    """
    held = {a.id: a for a in (account(session, K.AVAILABLE, user_id), account(session, K.ESCROW, user_id))}
    locked = session.execute(
        select(Account.id, Account.balance)
        .where(Account.user_id == user_id, Account.kind.in_([K.AVAILABLE, K.ESCROW]))
        .order_by(Account.id)
        .with_for_update()
    )
    # The balances as they stand once locked, which later reads in this transaction can trust.
    for account_id, balance in locked:
        set_committed_value(held[account_id], "balance", balance)


def _lock_job_funds(session: Session, job: Job) -> None:
    """Lock the owner's funds, then read the job's reservation as it stands now (another
    transaction may have settled part of it while this one waited for the lock)."""
    lock_funds(session, job.owner_id)
    session.flush()
    session.refresh(job, ["reserved", "cost"])


def _available(session: Session, user_id: int) -> Account:
    lock_funds(session, user_id)
    return account(session, K.AVAILABLE, user_id)


# -- credits in ----------------------------------------------------------------------------


def grant(
    session: Session, user: User, amount: int, *, memo: str = "", actor: User | None = None, key: str | None = None
) -> LedgerTransaction | None:
    """Create credits for a user from issuance."""
    if amount <= 0:
        raise PeergridError("A grant must be more than zero credits.")
    return post(
        session, key or f"grant:{uuid.uuid4()}", "grant",
        [(account(session, K.ISSUANCE), -amount), (account(session, K.AVAILABLE, user.id), amount)],
        memo=memo or "Credits granted.", actor_id=actor.id if actor else None,
    )


def starter_grant(session: Session, user: User, amount: int) -> None:
    if amount > 0:
        grant(session, user, amount, memo="Starter credits for a new account.", key=f"starter:user:{user.id}")


# -- escrow and settlement -------------------------------------------------------------------


def escrow(session: Session, job: Job, amount: int, *, key: str, what: str) -> None:
    """Reserve amount of the job owner's available credits for the job.

    Raises:
        InsufficientCredits: the owner has less available, with the shortfall.
    """
    if amount <= 0:
        return
    available = _available(session, job.owner_id)
    if available.balance < amount:
        raise InsufficientCredits(amount, available.balance, what)
    try:
        txn = post(
            session, key, "escrow", [(available, -amount), (account(session, K.ESCROW, job.owner_id), amount)],
            memo=f"Reserved for job {job.id}: {what}.", job_id=job.id, actor_id=job.owner_id,
        )
    except IntegrityError:  # a concurrent movement spent it first; the store refused the overdraft
        session.refresh(available, ["balance"])
        raise InsufficientCredits(amount, available.balance, what) from None
    if txn is not None:
        job.reserved += amount


def check_available(session: Session, user_id: int, amount: int, *, what: str) -> None:
    """Lock a person's funds and make sure amount of them is available, before anything is stored.

    Raises:
        InsufficientCredits: less is available, with the shortfall.
    """
    available = _available(session, user_id)
    if available.balance < amount:
        raise InsufficientCredits(amount, available.balance, what)


def escrow_many(session: Session, user_id: int, amount: int, *, key: str, what: str, memo: str) -> None:
    """Reserve amount of a person's available credits for many jobs in one movement; each job
    records its own share in its reserved (scheduler.arrays: one escrow for a whole array).

    Raises:
        InsufficientCredits: less is available, with the shortfall.
    """
    if amount <= 0:
        return
    check_available(session, user_id, amount, what=what)
    available = account(session, K.AVAILABLE, user_id)
    try:
        post(
            session, key, "escrow", [(available, -amount), (account(session, K.ESCROW, user_id), amount)],
            memo=memo, actor_id=user_id,
        )
    except IntegrityError:  # a concurrent movement spent it first; the store refused the overdraft
        session.refresh(available, ["balance"])
        raise InsufficientCredits(amount, available.balance, what) from None


def release_many(session: Session, user_id: int, amount: int, *, key: str, memo: str) -> None:
    """Return amount of a person's escrow to their available credits in one movement, for jobs that
    ended together and have set their reserved to zero (scheduler.arrays: cancelling an array)."""
    if amount <= 0:
        return
    lock_funds(session, user_id)
    post(
        session, key, "release",
        [(account(session, K.ESCROW, user_id), -amount), (account(session, K.AVAILABLE, user_id), amount)],
        memo=memo,
    )


def bill_attempt(session: Session, attempt: Attempt, *, end: datetime | None = None) -> int:
    """Charge an attempt for the seconds the server saw it run (capped at its op's limit), times
    its GPUs (or one core) and its market's price: the fee to the platform, the rest to the
    node's owner. Charged once, whoever calls; returns what was charged."""
    op = attempt.op
    job = op.job
    market = op.market
    if attempt.started_at is None or attempt.node is None:
        attempt.cost_note = "Not billed: the container never started."
        return 0
    _lock_job_funds(session, job)
    end = end or attempt.finished_at or utcnow()
    elapsed_ms = max(0, min(int((end - attempt.started_at).total_seconds() * 1000), op.timeout_s * 1000))
    units = billed_units(market, attempt.gpus)
    cost = min(cost_of(market, units, elapsed_ms), job.reserved)
    fee = cost * market.fee_ppm // MICRO
    note = (
        f"{elapsed_ms / 1000:.3f} s × {units} {unit_name(market, units)} × "
        f"{market.price_per_second} µcr/s = {cost} µcr; platform fee {market.fee_ppm / 10_000:g}% = {fee} µcr"
    )
    txn = post(
        session, f"settle:attempt:{attempt.id}", "settle",
        [
            (account(session, K.ESCROW, job.owner_id), -cost),
            (account(session, K.FEES), fee),
            (account(session, K.EARNINGS, attempt.node.owner_id), cost - fee),
        ],
        memo=f"Job {job.id}, op {op.key}, attempt {attempt.number}: {note}.",
        job_id=job.id, attempt_id=attempt.id,
    )
    if txn is None:
        return 0
    attempt.cost = cost
    attempt.cost_note = note
    job.cost += cost
    job.reserved -= cost
    return cost


def release(session: Session, job: Job) -> int:
    """Return what is left of an ended job's reservation to its owner."""
    _lock_job_funds(session, job)
    left = job.reserved
    if left <= 0:
        return 0
    txn = post(
        session, f"release:job:{job.id}", "release",
        [(account(session, K.ESCROW, job.owner_id), -left), (account(session, K.AVAILABLE, job.owner_id), left)],
        memo=f"Job {job.id} ended: the unused reservation returns.", job_id=job.id,
    )
    if txn is not None:
        job.reserved = 0
    return left


# -- payouts -------------------------------------------------------------------------------


def request_payout(session: Session, user: User, amount: int, *, minimum: int, now: datetime | None = None) -> Payout:
    """Move earnings into a payout request for an admin to decide.

    Raises:
        PeergridError: below the minimum. InsufficientCredits: more than the earnings.
    """
    if amount < max(1, minimum):
        raise PeergridError(f"A payout must be at least {credits(max(1, minimum))} credits.")
    earnings = account(session, K.EARNINGS, user.id)
    session.refresh(earnings, ["balance"], with_for_update=True)
    if earnings.balance < amount:
        raise InsufficientCredits(amount, earnings.balance, "This payout")
    payout = Payout(user_id=user.id, amount=amount, state=PayoutState.REQUESTED, requested_at=now or utcnow())
    session.add(payout)
    session.flush()
    try:
        post(
            session, f"payout:request:{payout.id}", "payout_request",
            [(earnings, -amount), (account(session, K.PAYOUT_PENDING, user.id), amount)],
            memo=f"Payout {payout.id} requested.", payout_id=payout.id, actor_id=user.id, now=now,
        )
    except IntegrityError:
        session.refresh(earnings, ["balance"])
        raise InsufficientCredits(amount, earnings.balance, "This payout") from None
    return payout


def _decidable(session: Session, payout_id: int, decision: PayoutState) -> Payout:
    payout = session.scalar(select(Payout).where(Payout.id == payout_id).with_for_update())
    if payout is None:
        raise NotFound(f"There is no payout {payout_id}.")
    if not can_move(payout.state, decision):
        raise Conflict(f"Payout {payout_id} was {payout.state.value} already.")
    return payout


def approve_payout(session: Session, admin: User, payout_id: int, reference: str, *, now: datetime | None = None) -> Payout:
    """Record that the payout was paid outside the system, with the payment's reference."""
    reference = (reference or "").strip()
    if not reference:
        raise PeergridError("Approving a payout needs the external payment's reference.")
    payout = _decidable(session, payout_id, PayoutState.APPROVED)
    now = now or utcnow()
    post(
        session, f"payout:approve:{payout.id}", "payout_paid",
        [(account(session, K.PAYOUT_PENDING, payout.user_id), -payout.amount), (account(session, K.PAID_OUT), payout.amount)],
        memo=f"Payout {payout.id} paid: {reference}.", payout_id=payout.id, actor_id=admin.id, now=now,
    )
    move(payout, PayoutState.APPROVED, now=now)
    payout.reference, payout.decided_by_id, payout.decided_at = reference[:200], admin.id, now
    return payout


def reject_payout(session: Session, admin: User, payout_id: int, reason: str, *, now: datetime | None = None) -> Payout:
    """Refuse a payout, with a reason; its credits return to the provider's earnings."""
    reason = (reason or "").strip()
    if not reason:
        raise PeergridError("Rejecting a payout needs a reason the provider can read.")
    payout = _decidable(session, payout_id, PayoutState.REJECTED)
    now = now or utcnow()
    post(
        session, f"payout:reject:{payout.id}", "payout_rejected",
        [(account(session, K.PAYOUT_PENDING, payout.user_id), -payout.amount), (account(session, K.EARNINGS, payout.user_id), payout.amount)],
        memo=f"Payout {payout.id} rejected: {reason}", payout_id=payout.id, actor_id=admin.id, now=now,
    )
    move(payout, PayoutState.REJECTED, now=now)
    payout.reason, payout.decided_by_id, payout.decided_at = reason, admin.id, now
    return payout


# -- the books -----------------------------------------------------------------------------


@dataclass
class Books:
    balanced: bool
    totals: dict[str, int]
    problems: list[str] = field(default_factory=list)


def check_books(session: Session) -> Books:
    """Check, from the data alone, that postings sum to zero, that each cached balance equals its
    postings, and that escrow equals the reservations of unfinished jobs."""
    problems: list[str] = []
    overall = session.scalar(select(func.coalesce(func.sum(Posting.amount), 0))) or 0
    if overall != 0:
        problems.append(f"All postings sum to {overall} µcr, not 0.")
    unbalanced = session.execute(
        select(Posting.transaction_id, func.sum(Posting.amount)).group_by(Posting.transaction_id)
        .having(func.sum(Posting.amount) != 0)
    ).all()
    for txn_id, total in unbalanced:
        problems.append(f"Transaction {txn_id}'s postings sum to {total} µcr, not 0.")
    posted = dict(session.execute(select(Posting.account_id, func.sum(Posting.amount)).group_by(Posting.account_id)).all())
    totals: dict[str, int] = {kind.value: 0 for kind in AccountKind}
    escrow_by_user: dict[int, int] = {}
    for acct in session.scalars(select(Account).order_by(Account.id)):
        totals[acct.kind.value] += acct.balance
        if acct.balance != posted.get(acct.id, 0):
            problems.append(
                f"Account {acct.id} ({acct.kind.value}, user {acct.user_id}) caches {acct.balance} µcr "
                f"but its postings sum to {posted.get(acct.id, 0)} µcr."
            )
        if acct.kind == K.ESCROW:
            escrow_by_user[acct.user_id] = acct.balance
    reserved = dict(
        session.execute(
            select(Job.owner_id, func.sum(Job.reserved)).where(Job.state.not_in(list(JOB_FINISHED))).group_by(Job.owner_id)
        ).all()
    )
    for user_id in set(escrow_by_user) | set(reserved):
        if escrow_by_user.get(user_id, 0) != (reserved.get(user_id) or 0):
            problems.append(
                f"User {user_id}'s escrow holds {escrow_by_user.get(user_id, 0)} µcr but their unfinished jobs "
                f"reserve {reserved.get(user_id) or 0} µcr."
            )
    leftover = session.execute(select(Job.id, Job.reserved).where(Job.state.in_(list(JOB_FINISHED)), Job.reserved != 0)).all()
    for job_id, amount in leftover:
        problems.append(f"Job {job_id} has ended but still reserves {amount} µcr.")
    totals["issued"] = -totals.pop(K.ISSUANCE.value)
    totals["postings_sum"] = overall
    return Books(balanced=not problems, totals=totals, problems=problems)
