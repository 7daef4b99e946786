"""The Celery application of the trusted scheduler service: its tasks on the `scheduler` queue, and
the timed upkeep (scheduler.upkeep) running inside its worker process, where a beat would be."""

from __future__ import annotations

from celery import Celery, bootsteps

from scheduler.core import Core
from scheduler.offers import broker_transport_options
from scheduler.settings import Settings
from scheduler.upkeep import Upkeep

SCHEDULER_QUEUE = "scheduler"


def make_celery(settings: Settings, core: Core | None = None) -> Celery:
    """Build the scheduler's Celery app from settings; tasks find the Core on `app.peergrid`."""
    app = Celery("peergrid", set_as_current=True)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_transport_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        task_default_queue=SCHEDULER_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        imports=["scheduler.tasks"],
    )
    app.peergrid = core or Core.from_settings(settings)
    app.steps["worker"].add(UpkeepStep)
    return app


class UpkeepStep(bootsteps.StartStopStep):
    """Runs the timed upkeep (scheduler.upkeep) inside the worker process, for as long as it runs."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.upkeep: Upkeep | None = None

    def start(self, worker) -> None:
        self.upkeep = worker.app.upkeep = Upkeep(worker.app.peergrid)
        self.upkeep.start()

    def stop(self, worker) -> None:
        if self.upkeep is not None:
            self.upkeep.stop()
