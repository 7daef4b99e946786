"""What the benchmarks share: the store and broker of each set-up, runtimes that skip Docker, percentiles."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from worker.errors import RuntimeUnavailable
from worker.reach import Reach

REDIS = os.environ.get("PEERGRID_TEST_REDIS_URL", "redis://127.0.0.1:6390/0")
POSTGRES = os.environ.get("PEERGRID_TEST_POSTGRES_URL", "postgresql+psycopg://peergrid:peergrid@127.0.0.1:5432/postgres")


@contextmanager
def store_and_broker(setup: str, root: Path) -> Iterator[tuple[str, str]]:
    """(database URL, broker URL) for `embedded` (SQLite files under root) or `scaled` (a fresh
    PostgreSQL database, dropped afterwards, and an emptied Redis)."""
    if setup == "embedded":
        yield f"sqlite:///{root / 'store.sqlite'}", f"sqla+sqlite:///{root / 'broker.sqlite'}"
        return
    import redis

    name = f"peergrid_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    redis.Redis.from_url(REDIS).flushdb()
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False), REDIS
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_timings(title: str, rows: list[tuple[str, list[float]]]) -> None:
    """Print median and p95 seconds of each row, and its median against the first row's, the baseline."""
    import statistics

    base_median = statistics.median(rows[0][1])
    print(title)
    print(f"{'what':28} {'median s':>9} {'p95 s':>9} {'× baseline':>11}")
    for name, values in rows:
        median = statistics.median(values)
        print(f"{name:28} {median:9.3f} {percentile(values, 0.95):9.3f} {median / base_median:11.2f}")


class FakeRuntime:
    """A container runtime for control-plane benchmarks: no Docker, nothing left behind."""

    # Its containers' ports, had it any, are dialled on the host's loopback.
    reach = Reach()

    def client(self):
        raise RuntimeUnavailable("The benchmark's runtime has no Docker engine.")

    def check(self):
        return None

    def machine(self):
        return None

    def remove_leftovers(self, owner):
        return 0

    def volume_jobs(self, owner):
        return set()

    def remove_volumes(self, owner, job_id):
        return 0
