"""Arrays: submitting and cancelling a 10,000-job array, against separate submits and bare inserts.

    .venv/bin/python -m bench.arrays [--jobs 10000] [--separate 200] [--setup embedded|scaled|both]

Each figure is one transaction through scheduler.arrays on a fresh store, committed: validate once,
plan, one escrow, then jobs, ops, first attempts and events in bulk. Offers are staged as for any
submit, but timed apart (publishing them is the broker's work, and placement passes will publish
only what they place): their rate is measured on --publish of them and scaled. The baselines, in the
same run and store: --separate one-job submits (submit_job, a commit each) scaled to --jobs, and
--jobs bare job rows written with one executemany, the floor of any bulk insert.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from bench.common import store_and_broker
from scheduler import offers
from scheduler.array_spec import parse_array_spec
from scheduler.arrays import array_for, cancel_array, submit_array
from scheduler.core import Core
from scheduler.jobs import submit_job
from scheduler.migrate import upgrade
from scheduler.models import Job, User
from scheduler.settings import Settings
from scheduler.states import JobState, utcnow
from tests import factories

DEFINITION = {"version": "0.1", "ops": [{"id": "train", "type": "container/run", "args": {
    "image": "busybox", "cmd": ["sh", "-c", "echo shard %%array.index%% of job %%global.job%%"]}}]}
LONE = {"version": "0.1", "ops": [{"id": "train", "type": "container/run", "args": {
    "image": "busybox", "cmd": ["sh", "-c", "echo shard 0 of job %%global.job%%"]}}]}


def one_setup(setup: str, jobs: int, separate: int, publish: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with store_and_broker(setup, root) as (database_url, broker_url):
            upgrade(database_url)
            core = Core.from_settings(Settings.from_env(
                {"PEERGRID_DATABASE_URL": database_url, "PEERGRID_BROKER_URL": broker_url,
                 "PEERGRID_SECRET_KEY": "bench"}, data_dir=root))
            try:
                return measure(core, jobs, separate, publish)
            finally:
                core.close()


def measure(core: Core, jobs: int, separate: int, publish: int) -> dict:
    user_id, _ = factories.user(core, credits=10 * (jobs + separate))
    figures = {}

    session = core.sessions()
    began = time.monotonic()
    made = submit_array(session, session.get(User, user_id), DEFINITION,
                        parse_array_spec(f"0-{jobs - 1}%50", max_size=jobs), default_timeout_s=3600,
                        max_array_ops=jobs)
    staged = offers.take_staged(session)
    session.commit()
    figures["array"] = time.monotonic() - began
    array_id = made.array.id
    session.close()
    assert len(staged) == jobs

    began = time.monotonic()
    sent = core.publisher.publish(staged[:publish])
    figures["publish"] = (time.monotonic() - began) * jobs / max(1, sent)

    with core.transaction() as session:
        assert session.scalar(select(func.count(Job.id)).where(Job.array_id == array_id)) == jobs
        owner = session.get(User, user_id)
        began = time.monotonic()
        cancel_array(session, array_for(session, owner, array_id))
        offers.discard_staged(session)
    figures["cancel"] = time.monotonic() - began

    began = time.monotonic()
    for _ in range(separate):
        session = core.sessions()
        submit_job(session, session.get(User, user_id), LONE, default_timeout_s=3600)
        offers.discard_staged(session)
        session.commit()
        session.close()
    figures["separate"] = (time.monotonic() - began) * jobs / separate

    now = utcnow()
    rows = [dict(owner_id=user_id, definition=LONE, state=JobState.CANCELLED, created_at=now, max_cost=0, reserved=0,
                 cost=0, priority=0) for _ in range(jobs)]
    with core.transaction() as session:
        began = time.monotonic()
        session.execute(insert(Job), rows)
        session.commit()
    figures["bare"] = time.monotonic() - began
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--separate", type=int, default=200, help="one-job submits timed, then scaled to --jobs")
    parser.add_argument("--publish", type=int, default=500, help="offers published, then scaled to --jobs")
    parser.add_argument("--setup", choices=["embedded", "scaled", "both"], default="both")
    args = parser.parse_args()
    setups = ["embedded", "scaled"] if args.setup == "both" else [args.setup]
    print(f"arrays: one array of {args.jobs:,} one-op jobs; separate submits timed on {args.separate} and scaled; "
          f"publishing timed on {args.publish} offers and scaled")
    print(f"{'setup':10} {'array s':>8} {'cancel s':>9} {'publish s':>10} {'separate s':>11} {'bare s':>7} "
          f"{'× separate':>11} {'× bare':>7}")
    for setup in setups:
        f = one_setup(setup, args.jobs, args.separate, args.publish)
        print(f"{setup:10} {f['array']:8.2f} {f['cancel']:9.2f} {f['publish']:10.1f} {f['separate']:11.1f} "
              f"{f['bare']:7.2f} {f['separate'] / f['array']:11.1f} {f['array'] / f['bare']:7.1f}")


if __name__ == "__main__":
    main()
