"""Delivering attempts' outcomes to the server: each kept in the outbox first, then sent until taken."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from protocol.messages import ReleaseReport, WorkOrder
from worker.archives import file_sha256
from worker.client import NodeClient
from worker.errors import AttemptGone, ServerError
from worker.logs import MAX_BATCH, LogShipper
from worker.outbox import Outbox, Outcome

log = logging.getLogger(__name__)


class Delivery:
    """Sends the outcomes kept in an outbox to the server; every method may be called from any thread."""

    def __init__(self, outbox: Outbox, client: Callable[[], NodeClient],
                 on_next: Callable[[tuple[WorkOrder, ...]], None] = lambda orders: None,
                 taking: Callable[[], bool] = lambda: False):
        self.outbox = outbox
        # Whether the node takes more work now, asked as each finished report goes out.
        self._taking = taking
        # Given the next work a finished report's answer carries, claimed for this node already.
        self._on_next = on_next
        # The node's client, asked each time: which node token it carries is settled as the agent runs.
        self._client = client
        # Held while an outcome is sent.
        self._sending = threading.Lock()

    def conclude(self, attempt_id: int, shipper: LogShipper, report: Outcome, *, cancel: threading.Event,
                 artifact: Path | None = None) -> None:
        """Keep the attempt's outcome with the lines the server lacks, at once, before anything waits
        on the server; then stop its log shipper and deliver what the server still lacks. cancel is
        set when the server has taken the attempt back."""
        if not (cancel.is_set() or shipper.gone.is_set()):
            self._keep(attempt_id, replace(report, lines=tuple(shipper.pending())), artifact=artifact)
        lines = shipper.finish()
        if cancel.is_set() or shipper.gone.is_set():
            log.info("attempt %s was taken back by the server; not reporting it", attempt_id)
            self.outbox.remove(attempt_id)
            return
        report = replace(report, lines=tuple(lines))
        self._keep(attempt_id, report)
        self._end(attempt_id, report)

    def _keep(self, attempt_id: int, report: Outcome, *, artifact: Path | None = None) -> None:
        try:
            self.outbox.put(attempt_id, report, artifact=artifact)
        except OSError as e:
            log.error("could not keep the outcome of attempt %s in %s (%s); if it cannot be delivered now it is "
                      "lost", attempt_id, self.outbox.folder, e)

    def _end(self, attempt_id: int, report: Outcome) -> None:
        """Try to deliver a kept outcome; what is not delivered now goes later."""
        try:
            with self._sending:
                delivered = self._deliver(attempt_id, report, retries=3)
        except ServerError as e:
            log.error("the server refuses this node's report of attempt %s: %s", attempt_id, e)
            return
        if not delivered:
            log.warning("could not report how attempt %s ended yet; keeping its outcome and sending it again "
                        "until the server takes it", attempt_id)

    def deliver_outbox(self) -> bool:
        """Send the kept outcomes, oldest first; True when none is left.

        Raises:
            ServerError: the server refuses this node (401 or 403); the outcomes stay kept.
        """
        with self._sending:
            for attempt_id in self.outbox.held():
                report = self.outbox.get(attempt_id)
                if report is None:
                    continue  # unreadable, and set aside
                if not self._deliver(attempt_id, report, retries=0):
                    return False  # the server is not answering; the rest wait with this one
                log.info("delivered the kept outcome of attempt %s", attempt_id)
        return True

    def _deliver(self, attempt_id: int, report: Outcome, *, retries: int) -> bool:
        """Send an attempt's outcome (its output archive, its log lines, how it ended); True when the
        server took it or never will, and it is no longer kept; False when it could not be told now
        (down, or failing)."""
        client = self._client()
        lines = report.lines
        try:
            artifact = self.outbox.artifact(attempt_id)
            if artifact is not None:
                try:
                    client.upload_artifact(attempt_id, artifact, file_sha256(artifact), retries=retries)
                except AttemptGone:
                    raise
                except ServerError as e:
                    if e.status in (401, 403) or _transient(e):
                        raise
                    report = replace(report, error=report.error or f"The output folder could not be uploaded: {e}")
                    self.outbox.put(attempt_id, report)
                self.outbox.drop_artifact(attempt_id)
            # The finished report carries at most one batch; the server stores each line once.
            while len(lines) > MAX_BATCH:
                if client.logs(attempt_id, lines[:MAX_BATCH], retries=retries).full:
                    lines = ()
                    break
                lines = lines[MAX_BATCH:]
            if isinstance(report, ReleaseReport):
                client.release(attempt_id, replace(report, lines=lines), retries=retries)
            else:
                answer = client.finished(attempt_id, replace(report, lines=lines, more=self._taking()),
                                         retries=retries)
                if answer.next:
                    self._on_next(answer.next)
        except AttemptGone:
            log.info("attempt %s ended but is no longer ours; its outcome is dropped", attempt_id)
        except ServerError as e:
            if e.status in (401, 403):
                raise
            if _transient(e):
                return False
            log.error("the server cannot take the outcome of attempt %s (%s); dropping it", attempt_id, e)
        self.outbox.remove(attempt_id)
        return True

    def send_until(self, stopping: threading.Event, every_s: float) -> None:
        """Send the outcomes that could not be delivered when their attempts ended, until taken,
        looking every every_s seconds until stopping is set."""
        while not stopping.wait(every_s):
            if not self.outbox.held():
                continue
            try:
                self.deliver_outbox()
            except ServerError as e:
                log.warning("the server refuses this node's reports: %s", e)


def _transient(e: ServerError) -> bool:
    """Whether the server may take later what it did not take now: it was down, or failing."""
    return e.status is None or e.status >= 500 or e.status in (408, 429)
