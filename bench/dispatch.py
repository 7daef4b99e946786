"""Dispatch: many trivial ops through peergrid (submit → placed → claimed → finished → settled)
against raw Celery no-op tasks of the same count, on the same broker.

    .venv/bin/python -m bench.dispatch [--ops 1000] [--setup embedded|scaled|both] [--separate]

The ops are one job array (`?array=0-N`), submitted in one request; --separate submits a job each.
The ops run on worker agents whose container runtime returns at once, so this measures the control
plane (API, store, broker, claims, reports, settlement), not Docker. Both sides get 8 concurrent slots.
The scaled set-up serves the web with gunicorn, a process per core, as compose.yaml does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Exchange, Queue
from sqlalchemy import create_engine, func, select, text

from bench.common import FakeRuntime, store_and_broker
from scheduler.models import Job
from scheduler.states import JobState
from tests import factories
from tests.stack import Api, Stack
from worker.agent import Agent
from worker.gpus import Inventory
from worker.runtime import Outcome
from worker.settings import WorkerSettings

SLOTS = 8


class InstantRuntime(FakeRuntime):
    """A container runtime whose containers start and exit 0 at once."""

    def run(self, spec, on_line, *, on_started=lambda: None, **_):
        on_started()
        on_line("stdout", "done")
        return Outcome(exit_code=0)


def celery_baseline(broker_url: str, count: int) -> float:
    app = Celery("bench", broker=broker_url, set_as_current=False)
    app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                    broker_transport_options={"polling_interval": 0.1} if not broker_url.startswith("sqla") else {})
    done = threading.Event()
    seen = []

    @app.task(name="bench.noop")
    def noop(i):
        seen.append(i)
        if len(seen) >= count:
            done.set()

    queue = f"bench-{uuid.uuid4().hex[:6]}"
    app.conf.task_default_queue = queue
    # Declared first: the worker may not be consuming yet when the tasks go out, and a broker
    # without the queue's binding would drop them.
    with app.connection_for_write() as conn:
        Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel).declare()
    with start_worker(app, pool="threads", concurrency=SLOTS, perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        began = time.monotonic()
        for i in range(count):
            noop.apply_async((i,), queue=queue)
        done.wait(600)
        return time.monotonic() - began


def peergrid_run(stack: Stack, count: int, *, separate: bool = False) -> float:
    _, node_token, _ = factories.node(stack.core, name="bench-node")
    agent = Agent(
        WorkerSettings(server=stack.url, token=node_token, slots=SLOTS, log_interval_s=0.05,
                       job_network="none"),
        runtime=InstantRuntime(),
        inventory=Inventory(gpus=(), message="bench"),
    )
    threading.Thread(target=agent.run, daemon=True).start()
    _, token = factories.user(stack.core, credits=100_000)
    api = Api(stack.url, token)
    engine = create_engine(stack.settings.database_url)
    time.sleep(2)  # let the agent register and start consuming
    began = time.monotonic()
    for _ in range(count if separate else 1):
        path = "/jobs" if separate else f"/jobs?array=0-{count - 1}"
        response = api.post(path, factories.hello_world("instant"))
        assert response.status_code == 201, (response.status_code, response.text[:300], stack.logs()[-2000:])
    deadline = time.monotonic() + 60 + count
    with engine.connect() as conn:
        while conn.execute(select(func.count()).select_from(Job).where(Job.state == JobState.SUCCEEDED)).scalar() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"not every job succeeded within {60 + count} s:\n{stack.logs()[-3000:]}")
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        settled = conn.execute(text("SELECT count(*) FROM ledger_transactions WHERE kind = 'settle'")).scalar()
    assert settled == count, f"{settled} of {count} attempts settled"
    agent.stop()
    engine.dispose()
    return elapsed


def one_setup(setup: str, count: int, *, separate: bool = False) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with store_and_broker(setup, root) as (database_url, broker_url):
            with Stack(root, database_url=database_url, broker_url=broker_url) as stack:
                # As each set-up is deployed: `peergrid up` serves with one process; compose.yaml runs
                # gunicorn with several.
                stack.start_web(processes=(os.cpu_count() or 1) if setup == "scaled" else 0)
                stack.start_scheduler()
                ours = peergrid_run(stack, count, separate=separate)
            # In a process of its own: Celery's test worker does not start cleanly twice in one.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                baseline = pool.apply(celery_baseline, (broker_url, count))
        return ours, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--setup", choices=["embedded", "scaled", "both"], default="both")
    parser.add_argument("--separate", action="store_true", help="a submit per job instead of one array")
    args = parser.parse_args()
    setups = ["embedded", "scaled"] if args.setup == "both" else [args.setup]
    how = "separate submits" if args.separate else "one array"
    print(f"dispatch, {args.ops} trivial ops ({how}), {SLOTS} slots each side")
    print(f"{'setup':10} {'peergrid s':>11} {'ops/s':>8} {'celery s':>9} {'tasks/s':>8} {'× celery':>9}")
    for setup in setups:
        ours, baseline = one_setup(setup, args.ops, separate=args.separate)
        print(f"{setup:10} {ours:11.2f} {args.ops / ours:8.1f} {baseline:9.2f} {args.ops / baseline:8.1f} {ours / baseline:9.1f}")


if __name__ == "__main__":
    main()
