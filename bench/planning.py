"""Planning: how validating, submitting and advancing a job grow with its number of ops.

    .venv/bin/python -m bench.planning [--ops 1000,2000,10000] [--shapes sequence,group,chain]
                                       [--setup embedded|scaled]

For each size and shape, one job is validated (`parse_definition`), submitted (`submit_job` in one
transaction, commit and offer publishing included) and, loaded again in a fresh session, advanced
once (`advance`, what runs after every attempt ends); then a node claims its first offered attempt
and reports it failed (`finish_attempt`), and what follows is decided: the next op offered, or in a
chain every other op skipped. Each job has a store of its own: SQLite and the SQL broker
(`embedded`, as `peergrid up` runs), or PostgreSQL and Redis (`scaled`). The shapes:
`sequence`, ops with no group, each its own group, so each waits for the one before (Nosana's
default); `group`, every op in one group, all offered at once; `chain`, one group where each op
depends on the next one listed. The baseline is a job of 100 ops of the same shape, measured in the
same run; "per op × base" is the time per op against the baseline's, 1.0 where the cost is linear.
The server's cap on ops per job is not applied here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import store_and_broker
from scheduler.core import Core
from scheduler.jobdef import parse_definition
from scheduler.jobs import submit_job
from scheduler.migrate import upgrade
from scheduler.models import Job, Node, User
from scheduler.attempts import claim_attempt, finish_attempt
from scheduler.nodes import NodeReport, register
from scheduler.orchestration import advance
from scheduler.settings import Settings
from tests import factories
from tests.factories import many_ops

BASELINE = 100


def measure(root: Path, setup: str, n: int, shape: str) -> tuple[float, float, float, float]:
    """Seconds to validate, submit, advance and fail an attempt of a job of n ops of shape, on a
    store of its own."""
    folder = root / f"{shape}-{n}"
    folder.mkdir()
    with store_and_broker(setup, folder) as (url, broker_url):
        return _measure(folder, url, broker_url, n, shape)


def _measure(folder: Path, url: str, broker_url: str, n: int, shape: str) -> tuple[float, float, float, float]:
    upgrade(url)
    core = Core.from_settings(Settings.from_env(
        {"PEERGRID_DATABASE_URL": url, "PEERGRID_BROKER_URL": broker_url, "PEERGRID_SECRET_KEY": "bench"},
        data_dir=folder))
    try:
        user_id, _ = factories.user(core, credits=10**7)
        node_id, _, _ = factories.node(core)
        with core.transaction() as session:
            register(session, session.get(Node, node_id), NodeReport(slots=1))
        doc = many_ops(n, shape)
        began = time.perf_counter()
        parse_definition(doc)
        validated = time.perf_counter() - began

        began = time.perf_counter()
        with core.transaction() as session:
            job_id = submit_job(session, session.get(User, user_id), doc, default_timeout_s=600).id
        submitted = time.perf_counter() - began

        with core.transaction() as session:
            job = session.get(Job, job_id)
            for op in job.ops:
                op.attempts  # loaded before the clock starts: advance's own work is measured
            began = time.perf_counter()
            advance(session, job)
            advanced = time.perf_counter() - began

        with core.transaction() as session:
            job = session.get(Job, job_id)
            for op in job.ops:
                op.attempts
            node = session.get(Node, node_id)
            attempt_id = next(a.id for op in job.ops for a in op.attempts)
            claim_attempt(session, node, attempt_id)
            began = time.perf_counter()
            finish_attempt(session, node, attempt_id, exit_code=1)
            failed = time.perf_counter() - began
    finally:
        core.close()
    return validated, submitted, advanced, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="1000,2000,10000", help="sizes, comma-separated")
    parser.add_argument("--shapes", default="sequence,group,chain")
    parser.add_argument("--setup", choices=("embedded", "scaled"), default="embedded")
    args = parser.parse_args()
    sizes = [int(n) for n in args.ops.split(",")]
    shapes = args.shapes.split(",")

    print(f"planning, one job per row, each on a store of its own ({args.setup}); baseline {BASELINE} ops of the same shape")
    print(f"{'shape':9} {'ops':>6} {'validate s':>11} {'submit s':>9} {'advance s':>10} {'failure s':>10} "
          f"{'per op × base':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for shape in shapes:
            base = measure(root, args.setup, BASELINE, shape)
            base_per_op = sum(base) / BASELINE
            print(f"{shape:9} {BASELINE:6} {base[0]:11.3f} {base[1]:9.3f} {base[2]:10.4f} {base[3]:10.4f} {1.0:14.2f}")
            for n in sizes:
                try:
                    row = measure(root, args.setup, n, shape)
                except Exception as e:  # reported in its row; the other rows still run
                    print(f"{shape:9} {n:6} failed: {type(e).__name__}: {str(e)[:60]}")
                    continue
                print(f"{shape:9} {n:6} {row[0]:11.3f} {row[1]:9.3f} {row[2]:10.4f} {row[3]:10.4f} "
                      f"{sum(row) / n / base_per_op:14.2f}")


if __name__ == "__main__":
    main()
