"""Leases in the store: at most one process holds each, and another takes it once it lapses.

The scheduler's upkeep (re-offers, the node reaper, time limits) runs in whichever scheduler
process holds the `upkeep` lease; the others stand by and take over within a lease's length when
the holder dies, however it dies.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.models import Lease
from scheduler.states import utcnow

UPKEEP = "upkeep"


def process_name() -> str:
    """This process as a lease holder: host, pid, and when it started (a reused pid is another process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{utcnow():%Y%m%dT%H%M%S.%f}"[:200]


def hold_lease(session: Session, name: str, holder: str, *, ttl_s: float, now: datetime | None = None) -> bool:
    """Take or renew the lease for ttl_s; return whether holder has it now."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)
    renewed = session.execute(
        update(Lease).where(Lease.name == name, Lease.holder == holder)
        .values(expires_at=expires).execution_options(synchronize_session=False)
    ).rowcount
    if renewed:
        return True
    # The conditional update is what makes a takeover exclusive: one standby wins a lapsed lease.
    taken = session.execute(
        update(Lease).where(Lease.name == name, Lease.expires_at < now)
        .values(holder=holder, acquired_at=now, expires_at=expires).execution_options(synchronize_session=False)
    ).rowcount
    if taken:
        return True
    if session.scalar(select(Lease.name).where(Lease.name == name)) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, acquired_at=now, expires_at=expires))
    except IntegrityError:  # another process made it at the same moment
        return False
    return True


def lease_holder(session: Session, name: str, *, now: datetime | None = None) -> Lease | None:
    """The lease as it stands, when someone holds it now."""
    lease = session.get(Lease, name, populate_existing=True)
    if lease is None or lease.expires_at < (now or utcnow()):
        return None
    return lease


def give_up_lease(session: Session, name: str, holder: str) -> None:
    """Let the lease go at once, so a standby need not wait for it to lapse."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
