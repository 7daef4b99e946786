"""The scheduler's timed upkeep: the node reaper, time limits and broker pruning.

It runs in a thread of each scheduler process, but only the process holding the upkeep lease does
the chores; the others renew nothing and stand by. A process killed outright takes its thread with
it (there is no separate beat process to orphan), and its lease lapses for a standby to take.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from scheduler import tasks
from scheduler.leadership import UPKEEP, give_up_lease, hold_lease, process_name

log = logging.getLogger(__name__)

# How long a holder's lease lasts unrenewed, and how often the loop wakes to renew it and run chores.
LEASE_S = 10.0
TICK_S = 1.0


@dataclass(frozen=True)
class Chore:
    name: str
    every_s: float
    run: Callable[[object], int]
    # Whether it runs as soon as its process leads, or first after one interval.
    at_once: bool = True


def chores(settings) -> list[Chore]:
    """The timed work, with how often each runs for these settings."""
    found = [
        Chore("reap-silent-nodes", max(1.0, settings.node_timeout_s / 5), tasks.reap_nodes),
        Chore("expire-overdue-attempts", max(1.0, min(30.0, settings.timeout_grace_s / 2)), tasks.expire_overdue),
    ]
    if settings.broker_url.startswith("sqla+"):  # only an SQL broker keeps what it delivered
        # Not at once: what a new leader's broker delivered in its first minute stays readable a while.
        found.append(Chore("prune-broker", 60.0, tasks.prune_broker, at_once=False))
    return found


class Upkeep(threading.Thread):
    """Holds the upkeep lease when it can and runs each chore when it falls due."""

    def __init__(self, core, *, holder: str | None = None, lease_s: float = LEASE_S, tick_s: float = TICK_S):
        super().__init__(name="upkeep", daemon=True)
        self.core = core
        self.holder = holder or process_name()
        self.lease_s = lease_s
        self.tick_s = tick_s
        self.chores = chores(core.settings)
        self.leading = False
        self._due = {c.name: 0.0 if c.at_once else time.monotonic() + c.every_s for c in self.chores}
        self._stopping = threading.Event()
        self._store_failing = False

    def run(self) -> None:
        while not self._stopping.is_set():
            self.step()
            self._stopping.wait(self.tick_s)
        if self.leading:
            try:
                with self.core.transaction() as session:
                    give_up_lease(session, UPKEEP, self.holder)
            except Exception as e:
                log.warning("could not give up the upkeep lease (it lapses in %.0f s): %s", self.lease_s, e)

    def step(self) -> None:
        """Renew or take the lease, then run the chores that are due; never raise."""
        try:
            with self.core.transaction() as session:
                leading = hold_lease(session, UPKEEP, self.holder, ttl_s=self.lease_s)
            if self._store_failing:
                log.info("the store is reachable again")
                self._store_failing = False
        except Exception as e:
            if not self._store_failing:
                log.warning("cannot reach the store to hold the upkeep lease: %s", e)
                self._store_failing = True
            leading = False
        if leading != self.leading:
            log.info("%s the scheduler's upkeep", "leading" if leading else "standing by for")
            self.leading = leading
        now = time.monotonic()
        if leading:
            for chore in self.chores:
                if now < self._due[chore.name]:
                    continue
                self._due[chore.name] = now + chore.every_s
                try:
                    chore.run(self.core)
                except Exception:
                    log.exception("upkeep chore %s failed; it runs again in %.0f s", chore.name, chore.every_s)
        # For `peergrid health`: a loop stuck in a chore or on the store stops beating; a store that
        # refuses at once does not stop it (the step goes round, standing by).
        standing_by = "standing by, the store is unreachable" if self._store_failing else "standing by"
        self.core.liveness.beat("upkeep", self.tick_s, "leading" if leading else standing_by)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
