"""The scheduler's timed chores (scheduler.upkeep runs them): thin wrappers that open a
transaction and call plain functions. They are Celery tasks too, so an operator can run one now."""

from __future__ import annotations

import logging
from celery import current_app, shared_task

from scheduler import offers

log = logging.getLogger(__name__)


def expire_overdue(core) -> int:
    """Fail attempts whose node went silent past the op's time limit; return how many."""
    from scheduler.attempts import expire_overdue as expire

    with core.transaction() as session:
        expired = expire(session, grace_s=core.settings.timeout_grace_s)
    if expired:
        log.info("timed out %d attempt(s) whose node stopped reporting", len(expired))
    return len(expired)


@shared_task(name="peergrid.expire_overdue_attempts", ignore_result=True)
def expire_overdue_attempts() -> int:
    return expire_overdue(current_app.peergrid)


def reap_nodes(core) -> int:
    """Take silent nodes offline and offer their work again; return how many went offline."""
    from scheduler.nodes import reap_silent_nodes

    from scheduler.hearing import hearing

    with core.transaction() as session:
        heard = hearing(session)
        if heard is None:
            log.info("no web process marks itself as hearing nodes; no node is taken offline meanwhile")
            return 0
        silent = reap_silent_nodes(session, timeout_s=core.settings.node_timeout_s, heard=heard)
        names = [n.name for n in silent]
    if names:
        log.warning("nodes went silent and are now offline: %s", ", ".join(names))
    return len(names)


@shared_task(name="peergrid.reap_silent_nodes", ignore_result=True)
def reap_silent_nodes() -> int:
    return reap_nodes(current_app.peergrid)


def prune_broker(core) -> int:
    """Delete what the embedded broker has delivered; return how many messages went."""
    pruned = offers.prune_delivered(core.settings.broker_url)
    if pruned:
        log.info("pruned %d delivered message(s) from the broker's table", pruned)
    return pruned


@shared_task(name="peergrid.prune_broker", ignore_result=True)
def prune_broker_messages() -> int:
    return prune_broker(current_app.peergrid)
