"""Whether the server could hear its nodes, so that its own outage is not taken for theirs.

Each web process marks itself alive in the store every few seconds while it can reach it. Node
silence counts only while some web process has been marking without a gap: after the web or the
store was down, every node gets the full node timeout, counted from when hearing resumed, before it
is taken offline.

A web process writes the times its nodes were heard in the transaction that marks it
(scheduler.last_seen): every heartbeat it heard before its mark is stored by then. Silence is
therefore measured up to the oldest fresh mark, the moment by which every live listener has stored
what it heard.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from scheduler.last_seen import SeenBuffer, write_batch
from scheduler.models import Listener
from scheduler.states import utcnow

log = logging.getLogger(__name__)

# How often a web process marks itself; a mark older than GAP_MARKS of these is a gap.
MARK_EVERY_S = 2.0
GAP_MARKS = 3
# Listeners not heard from for this long are forgotten.
FORGET_AFTER = timedelta(hours=1)


def mark_heard(session: Session, listener_id: str, *, now: datetime | None = None) -> None:
    """Record that this web process reaches the store now; a gap since its last mark restarts `since`."""
    now = now or utcnow()
    gap = now - timedelta(seconds=MARK_EVERY_S * GAP_MARKS)
    row = session.get(Listener, listener_id)
    if row is None:
        session.add(Listener(id=listener_id, alive_at=now, since=now))
    else:
        if row.alive_at < gap:
            row.since = now
        row.alive_at = now
    session.execute(delete(Listener).where(Listener.alive_at < now - FORGET_AFTER))


@dataclass(frozen=True)
class Hearing:
    """The span over which the server heard without a gap: from `since` to `until`, the oldest fresh
    mark, by which every listener marking now has stored the heartbeats it heard."""

    since: datetime
    until: datetime


def hearing(session: Session, *, now: datetime | None = None) -> Hearing | None:
    """How long the server has heard without a gap, from the web processes marking now; None when
    none marks now: then nobody can tell a silent node from a deaf server.

    Silence is measured up to `until`, not up to now: in the seconds after the web dies and before
    its marks go stale, nobody is heard, and nobody is blamed for it; and a heartbeat a listener
    heard after its latest mark may not be stored yet, so `until` is the oldest fresh mark.
    """
    now = now or utcnow()
    fresh = now - timedelta(seconds=MARK_EVERY_S * GAP_MARKS)
    since, until = session.execute(
        select(func.min(Listener.since), func.min(Listener.alive_at)).where(Listener.alive_at >= fresh)
    ).one()
    return Hearing(since, until) if since is not None else None


class Ears(threading.Thread):
    """A web process's marker thread: every MARK_EVERY_S seconds until stopped, writes what its
    heartbeats left in `seen` and marks, in one transaction, and beats loop `hearing` in the health
    file each time it tries, whether or not the store answered.

    The web's gunicorn workers share one health file, each replacing it whole: any one of them still
    marking keeps it fresh.
    """

    def __init__(self, core, listener_id: str):
        super().__init__(name="hearing", daemon=True)
        self.core = core
        self.listener_id = listener_id
        self.seen = SeenBuffer()
        self._stopping = threading.Event()
        self._failing = False

    def run(self) -> None:
        while True:
            try:
                self.mark()
                if self._failing:
                    log.info("the store is reachable again; node heartbeats count from now")
                self._failing = False
            except Exception as e:  # the store is down: the gap is what the reaper needs to see
                if not self._failing:
                    log.warning("cannot reach the store to mark this web process alive: %s", e)
                self._failing = True
            self.core.liveness.beat("hearing", MARK_EVERY_S, "the store is unreachable" if self._failing else None)
            if self._stopping.wait(MARK_EVERY_S):
                return

    def mark(self) -> None:
        """Write what the buffer holds and mark this process heard as of when it was taken."""
        batch = self.seen.take()
        try:
            with self.core.transaction() as session:
                write_batch(session.connection(), batch)
                mark_heard(session, self.listener_id, now=batch.taken_at)
        except BaseException:
            self.seen.put_back(batch)
            raise

    def stop(self) -> None:
        self._stopping.set()


def stop_marking(session: Session, listener_id: str) -> None:
    """A web process stopping cleanly stops counting as one that hears."""
    session.execute(delete(Listener).where(Listener.id == listener_id))
