"""The token ledger: accounts, transactions of postings that sum to zero, and payouts."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models.base import Base, state_column
from scheduler.states import PayoutState, utcnow


class AccountKind(str, enum.Enum):
    AVAILABLE = "available"  # a user's spendable credits
    ESCROW = "escrow"  # a user's credits reserved for their unfinished jobs
    EARNINGS = "earnings"  # a provider's earned credits, not yet asked to be paid out
    PAYOUT_PENDING = "payout_pending"  # a provider's credits in payout requests awaiting an admin
    ISSUANCE = "issuance"  # the platform's source of credits: its balance is minus all ever granted
    FEES = "fees"  # the platform's share of charges
    PAID_OUT = "paid_out"  # credits paid out to providers, outside the system


USER_KINDS = frozenset({AccountKind.AVAILABLE, AccountKind.ESCROW, AccountKind.EARNINGS, AccountKind.PAYOUT_PENDING})


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("kind", "user_id"),
        # The store itself refuses to let a person's account go below zero.
        CheckConstraint(
            "kind NOT IN ('available', 'escrow', 'earnings', 'payout_pending') OR balance >= 0",
            name="user_balance_not_negative",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[AccountKind] = mapped_column(state_column(AccountKind))
    # NULL for the platform's own accounts.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    # Micro-credits: the sum of this account's postings, kept in step in the same transaction.
    balance: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerTransaction(Base):
    __tablename__ = "ledger_transactions"
    __table_args__ = (Index("ix_ledger_transactions_job_id", "job_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # One business event, one key: settle:attempt:42, escrow:job:7, grant:..., so a retry never posts twice.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id", ondelete="SET NULL"))
    payout_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id", ondelete="SET NULL"))
    # Who caused it: the admin who granted or decided, the user who submitted; NULL for the system.
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    postings: Mapped[list["Posting"]] = relationship(back_populates="transaction", order_by="Posting.id")


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (CheckConstraint("amount <> 0", name="amount_not_zero"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id", ondelete="RESTRICT"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"), index=True)
    amount: Mapped[int]

    transaction: Mapped[LedgerTransaction] = relationship(back_populates="postings")
    account: Mapped[Account] = relationship()


class Payout(Base):
    __tablename__ = "payouts"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    amount: Mapped[int]
    state: Mapped[PayoutState] = mapped_column(state_column(PayoutState), default=PayoutState.REQUESTED, index=True)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The external payment's reference, when approved.
    reference: Mapped[str | None] = mapped_column(String(200))
    # Why it was rejected.
    reason: Mapped[str | None] = mapped_column(Text)
