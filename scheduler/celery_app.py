"""The Celery application of the trusted scheduler service: its tasks on the `scheduler` queue, the
timed upkeep (scheduler.upkeep) running inside its worker process, where a beat would be, and the
consumer's beat in the health file (protocol.liveness)."""

from __future__ import annotations

from celery import Celery, bootsteps

from scheduler.core import Core
from scheduler.offers import broker_transport_options
from scheduler.passes import Passes
from scheduler.settings import Settings
from scheduler.upkeep import Upkeep

SCHEDULER_QUEUE = "scheduler"

# How often the consumer's loop beats loop `consumer` in the health file, and how long it may take to
# start: from the worker's start to its first connection to the broker.
CONSUMER_BEAT_S = 1.0
CONSUMER_START_S = 10.0
# How long Celery's loop for transports without an event loop (celery.worker.loops.synloop) waits
# for a message before it goes round again.
SYNLOOP_WAIT_S = 2.0


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
    app.steps["consumer"].add(ConsumerBeat)
    return app


class UpkeepStep(bootsteps.StartStopStep):
    """Runs the timed upkeep (scheduler.upkeep) and the placement passes (scheduler.passes) inside
    the worker process, for as long as it runs; both act only while it holds the upkeep lease."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.upkeep: Upkeep | None = None
        self.passes: Passes | None = None

    def start(self, worker) -> None:
        core = worker.app.peergrid
        self.upkeep = worker.app.upkeep = Upkeep(core)
        core.liveness.expect("upkeep", self.upkeep.tick_s)
        self.upkeep.start()
        upkeep = self.upkeep
        self.passes = worker.app.passes = Passes(core, lambda: upkeep.leading)
        core.liveness.expect("placement", self.passes.every_s * 5)
        self.passes.start()

    def stop(self, worker) -> None:
        if self.passes is not None:
            self.passes.stop()
        if self.upkeep is not None:
            self.upkeep.stop()


class ConsumerBeat(bootsteps.StartStopStep):
    """Beats loop `consumer` in the health file from the consumer's own loop, so that a consumer
    stuck in a task (the solo pool runs tasks in that loop) or gone stops the beats.

    On Redis and AMQP the worker runs an event loop (the hub, celery.worker.components.Hub), and the
    consumer's timer is the hub's own, fired between its turns: a beat on it is a turn of the loop.
    On transports without one (the embedded SQL broker) the timer is a thread of its own
    (celery.utils.timer2), whose beats would prove only that the process lives; there the timer
    only asks the consumer to beat, with consumer.call_soon, which its loop performs at the top of
    each turn (Consumer.perform_pending_operations, from synloop).
    """

    def __init__(self, consumer, **kwargs):
        super().__init__(consumer, **kwargs)
        self.entry = None
        self.asked = False
        # So that a consumer that has not connected yet counts against health, rather than being absent.
        consumer.app.peergrid.liveness.expect("consumer", CONSUMER_START_S)

    def start(self, consumer) -> None:
        liveness = consumer.app.peergrid.liveness
        # A beat asked of the last connection's loop may have gone with it.
        self.asked = False

        if consumer.hub is not None:
            def tick() -> None:
                liveness.beat("consumer", CONSUMER_BEAT_S)
        else:
            def beat() -> None:
                self.asked = False
                liveness.beat("consumer", CONSUMER_BEAT_S + SYNLOOP_WAIT_S)

            def tick() -> None:
                if not self.asked:  # one at a time: a stuck loop must not pile them up
                    self.asked = True
                    consumer.call_soon(beat)

        # Celery cancels what its consumer put on the hub's timer when the connection fails, and
        # starts this step again once it reconnects.
        self.entry = consumer.timer.call_repeatedly(CONSUMER_BEAT_S, tick)

    def stop(self, consumer) -> None:
        if self.entry is not None:
            consumer.timer.cancel(self.entry)
            self.entry = None

    shutdown = stop
