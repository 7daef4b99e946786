"""The overview's GPU utilisation chart: each hour's share of the online GPU time that ran ops."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from scheduler.models import Attempt, Job, Market, Node, Op
from scheduler.nodes import GpuReport, NodeReport, register
from scheduler.overview import gpu_utilisation
from scheduler.states import AttemptState
from tests import factories

NOW = datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)


def at(hour: int, minute: int = 0) -> datetime:
    return NOW.replace(hour=hour, minute=minute)


def test_each_hour_counts_the_gpu_seconds_that_fell_in_it(core):
    owner_id, _ = factories.user(core)
    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(gpus=tuple(GpuReport(index=i, uuid=f"GPU-{i}", name="NVIDIA L4") for i in range(4))))
        markets = {m.gpu_count: m for m in session.scalars(select(Market).where(Market.slug.in_(["cpu", "gpu", "gpu-2x", "gpu-4x"])))}
        job = Job(owner_id=owner_id, definition={})
        session.add(job)

        def attempt(number: int, gpus: int, began: datetime, ended: datetime | None) -> None:
            op = Op(job=job, key=f"op-{number}", position=number, type="container/run", spec={},
                    market=markets[gpus], timeout_s=60)
            session.add(Attempt(
                op=op, number=1, state=AttemptState.SUCCEEDED if ended else AttemptState.RUNNING,
                node_id=node_id, gpus=[f"GPU-{i}" for i in range(gpus)], started_at=began, finished_at=ended,
            ))

        attempt(1, 2, at(10, 30), at(11, 30))  # 2 GPUs for half of 10:00 and half of 11:00
        attempt(2, 1, at(12), None)  # one GPU since 12:00, still running at 12:30
        attempt(3, 0, at(10), at(12))  # a CPU op uses no GPU time
        attempt(4, 4, at(6), at(9))  # before the window
    with core.transaction() as session:
        chart = gpu_utilisation(session, hours=3, now=NOW)
    assert [hour for hour, _ in chart] == [at(10), at(11), at(12)]
    # 4 GPUs online: an hour holds 14,400 GPU-seconds.
    assert [share for _, share in chart] == [3600 / 14400, 3600 / 14400, 1800 / 14400]
