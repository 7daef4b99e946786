"""The scheduler's periodic tasks: thin wrappers that load rows and call plain functions."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import current_app, shared_task

from scheduler import offers

log = logging.getLogger(__name__)


def reoffer_stale(core) -> int:
    """Publish again every queued attempt whose offer was lost or sat unclaimed; return how many."""
    with core.transaction() as session:
        stale = offers.stale_attempts(
            session, older_than=timedelta(seconds=core.settings.reoffer_after_s)
        )
        for attempt in stale:
            offers.stage(session, attempt)
    if stale:
        log.info("re-offered %d attempt(s)", len(stale))
    return len(stale)


@shared_task(name="peergrid.reoffer_stale_attempts", ignore_result=True)
def reoffer_stale_attempts() -> int:
    return reoffer_stale(current_app.peergrid)
