"""Reading the ledger: a person's movements, payouts, and the whole ledger for admins, as rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.errors import PeergridError
from scheduler.models import Account, LedgerTransaction, Payout, PayoutState, Posting, User


@dataclass(frozen=True)
class Movement:
    """One posting with its transaction: what moved, where, when and why."""

    transaction_id: int
    time: datetime
    kind: str
    key: str
    memo: str
    account: str
    user_email: str | None
    amount: int
    job_id: int | None
    attempt_id: int | None
    payout_id: int | None


def movements(
    session: Session,
    *,
    user_id: int | None = None,
    kind: str | None = None,
    job_id: int | None = None,
    limit: int = 500,
    offset: int = 0,
) -> list[Movement]:
    query = (
        select(Posting, LedgerTransaction, Account, User.email)
        .join(LedgerTransaction, LedgerTransaction.id == Posting.transaction_id)
        .join(Account, Account.id == Posting.account_id)
        .outerjoin(User, User.id == Account.user_id)
        .order_by(LedgerTransaction.id.desc(), Posting.id)
    )
    if user_id is not None:
        query = query.where(Account.user_id == user_id)
    if kind:
        query = query.where(LedgerTransaction.kind == kind)
    if job_id is not None:
        query = query.where(LedgerTransaction.job_id == job_id)
    rows = session.execute(query.limit(limit).offset(offset))
    return [
        Movement(
            transaction_id=txn.id, time=txn.created_at, kind=txn.kind, key=txn.key, memo=txn.memo,
            account=account.kind.value, user_email=email, amount=posting.amount, job_id=txn.job_id,
            attempt_id=txn.attempt_id, payout_id=txn.payout_id,
        )
        for posting, txn, account, email in rows
    ]


def payouts(session: Session, *, user_id: int | None = None, state: str | None = None, limit: int = 500) -> list[tuple[Payout, str]]:
    query = select(Payout, User.email).join(User, User.id == Payout.user_id).order_by(Payout.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(Payout.user_id == user_id)
    if state:
        try:
            query = query.where(Payout.state == PayoutState(state))
        except ValueError:
            raise PeergridError(f"Unknown payout state {state!r}: use requested, approved or rejected.") from None
    return [(payout, email) for payout, email in session.execute(query)]


def earnings_by_node(session: Session, node_ids: list[int]) -> dict[int, int]:
    """What each node's owner has earned from the ops it ran, in micro-credits."""
    from sqlalchemy import func

    from scheduler.models import AccountKind, Attempt

    if not node_ids:
        return {}
    rows = session.execute(
        select(Attempt.node_id, func.sum(Posting.amount))
        .join(LedgerTransaction, LedgerTransaction.attempt_id == Attempt.id)
        .join(Posting, Posting.transaction_id == LedgerTransaction.id)
        .join(Account, Account.id == Posting.account_id)
        .where(Attempt.node_id.in_(node_ids), Account.kind == AccountKind.EARNINGS)
        .group_by(Attempt.node_id)
    )
    return {node_id: total for node_id, total in rows}
