"""The Celery application of the trusted scheduler service: periodic upkeep on the `scheduler` queue."""

from __future__ import annotations

from celery import Celery

from scheduler.core import Core
from scheduler.offers import broker_transport_options
from scheduler.settings import Settings

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
        beat_schedule_filename=str(settings.data_dir / "beat-schedule"),
        beat_schedule={
            "reoffer-stale-attempts": {
                "task": "peergrid.reoffer_stale_attempts",
                "schedule": max(1.0, settings.reoffer_after_s / 3),
            },
            "reap-silent-nodes": {
                "task": "peergrid.reap_silent_nodes",
                "schedule": max(1.0, settings.node_timeout_s / 5),
            },
            "expire-overdue-attempts": {
                "task": "peergrid.expire_overdue_attempts",
                "schedule": max(1.0, min(30.0, settings.timeout_grace_s / 2)),
            },
            # Only an SQL broker keeps what it delivered.
            **(
                {"prune-broker": {"task": "peergrid.prune_broker", "schedule": 60.0}}
                if settings.broker_url.startswith("sqla+") else {}
            ),
        },
        imports=["scheduler.tasks"],
    )
    app.peergrid = core or Core.from_settings(settings)
    return app
