"""The jobs' named volumes on this node: made by create_volume ops, removed once their job has ended."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from worker.runtime import DockerRuntime, Outcome, Owner, volume_name

log = logging.getLogger(__name__)


class Volumes:
    """The volumes of the jobs this node has run ops of; every method may be called from any thread."""

    def __init__(self, runtime: DockerRuntime, owner: Callable[[], Owner], busy: Callable[[], set[int]]):
        self.runtime = runtime
        # The node, known once registered, and the jobs with an attempt running here now.
        self._owner = owner
        self._busy = busy
        # The jobs whose volumes this node holds, as last listed; _sweeping is held while that runs.
        self.jobs: list[int] = []
        self._sweeping = threading.Lock()

    def create(self, job_id: int, name: str, labels: dict[str, str]) -> Outcome:
        """Make the job's volume called name (once; a second call finds it)."""
        return self.runtime.create_volume(volume_name(self._owner().cluster, job_id, name), labels)

    def sweep(self, ended: list[int]) -> None:
        """Remove the volumes of jobs that have ended and run nothing here, then list whose remain."""
        if not self._sweeping.acquire(blocking=False):
            return  # the last sweep still runs; the server names these jobs again next time
        try:
            busy = self._busy()
            for job_id in sorted(set(ended) - busy):
                removed = self.runtime.remove_volumes(self._owner(), job_id)
                if removed:
                    log.info("removed %d volume(s) of job %s, which has ended", removed, job_id)
            held = self.runtime.volume_jobs(self._owner())
            if held is not None:
                self.jobs = sorted(held)
        finally:
            self._sweeping.release()
