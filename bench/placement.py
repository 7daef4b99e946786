"""Placement: one pass with 1,000 nodes and 10,000 waiting attempts.

    .venv/bin/python -m bench.placement [--nodes 1000] [--waiting 10000] [--runs 5] [--setup embedded|scaled]

Two figures: the plan alone (ranking and placing plain values, scheduler.ordering and
scheduler.planner), and a whole pass on a real store (scheduler.placing.run_pass: read what waits
and what is free, plan, write each placement and every reason that changed), on nodes already
full so that each pass plans every waiting attempt and reserves for the first ones, which is its
most expensive case. The baseline, measured in the same run, is reading the waiting attempts'
rows alone, the least any pass must do.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from bench.common import print_timings, store_and_broker
from scheduler.migrate import upgrade
from scheduler.models import Attempt, Job, Market, Node, NodeGpu, Op, User
from scheduler.ordering import rank
from scheduler.placing import _wants_query, run_pass
from scheduler.planner import NodeRoom, Want, plan
from scheduler.states import AttemptState, JobState, NodeState, OpState, utcnow

MODELS = [("NVIDIA A100-SXM4-80GB", 81920), ("NVIDIA GeForce RTX 4090", 24576), ("NVIDIA H100 80GB HBM3", 81920)]


def plain_values(nodes: int, waiting: int, rng: random.Random):
    now = utcnow()
    rooms = []
    for n in range(nodes):
        count = rng.choice([1, 2, 4, 8])
        uuids = [f"GPU-{n}-{g}" for g in range(count)]
        # Every GPU busy, ending some time in the next hour.
        busy = {u: now + timedelta(seconds=rng.randint(60, 3600)) for u in uuids}
        qualifies = {m: frozenset(uuids) for m in (1, 2, 4, 8) if m <= count}
        rooms.append(NodeRoom(id=n, name=f"rig-{n}", gpu_vram=dict.fromkeys(uuids, 81920), qualifies=qualifies,
                              busy_until=busy, markets=frozenset(qualifies)))
    wants = [
        Want(attempt_id=i, job_id=i, owner_id=rng.randint(1, 50), market_id=(m := rng.choice([1, 1, 1, 2, 4, 8])),
             gpus=m, timeout_s=rng.choice([600, 1800, 3600]), priority=rng.choice([0, 0, 0, 1]),
             created_at=now - timedelta(seconds=waiting - i))
        for i in range(waiting)
    ]
    use = {owner: rng.random() * 3.6e6 for owner in range(1, 51)}
    return rooms, wants, use, now


def fill_store(url: str, nodes: int, waiting: int, rng: random.Random) -> None:
    """nodes registered nodes with every GPU running an attempt, and waiting queued attempts, in bulk."""
    engine = create_engine(url)
    now = utcnow()
    with Session(engine) as session:
        markets = {}
        for gpus in (1, 2, 4, 8):
            market = Market(slug=f"a100x{gpus}", name=f"{gpus}× A100", queue=f"market.a100x{gpus}", gpu_count=gpus,
                            min_vram_mb=40_000, price_per_second=10)
            session.add(market)
            markets[gpus] = market
        session.flush()
        owners = [User(email=f"user{i}@example.com", password_hash="x") for i in range(50)]
        provider = User(email="provider@example.com", password_hash="x")
        session.add_all([*owners, provider])
        session.flush()
        session.execute(insert(Node), [
            {"id": n + 1, "owner_id": provider.id, "name": f"rig-{n}", "token_hash": f"{n:064d}", "state": NodeState.BUSY,
             "slots": 1, "simulated": True, "serves_endpoints": True, "last_heartbeat_at": now} for n in range(nodes)
        ])
        counts = {n + 1: rng.choice([1, 2, 4, 8]) for n in range(nodes)}
        session.execute(insert(NodeGpu), [
            {"node_id": n, "index": g, "uuid": f"GPU-{n}-{g}", "name": MODELS[0][0], "memory_total_mb": MODELS[0][1],
             "memory_free_mb": 0} for n, count in counts.items() for g in range(count)
        ])
        jobs, ops, attempts = [], [], []
        job_id = 0
        # One running 1-GPU attempt per GPU, then the waiting ones.
        running = [(n, g) for n, count in counts.items() for g in range(count)]
        for index in range(len(running) + waiting):
            job_id += 1
            gpus = 1 if index < len(running) else rng.choice([1, 1, 1, 2, 4, 8])
            jobs.append({"id": job_id, "owner_id": owners[rng.randrange(50)].id, "state": JobState.QUEUED,
                         "definition": {}, "priority": rng.choice([0, 0, 0, 1]), "created_at": now})
            ops.append({"id": job_id, "job_id": job_id, "key": "op", "position": 0, "type": "container/run",
                        "spec": {}, "market_id": markets[gpus].id, "state": OpState.QUEUED,
                        "timeout_s": rng.choice([600, 1800, 3600])})
            row = {"id": job_id, "op_id": job_id, "number": 1, "created_at": now - timedelta(seconds=waiting - index),
                   "offered_at": now, "state": AttemptState.QUEUED, "gpus": [], "placed_gpus": []}
            if index < len(running):
                node, g = running[index]
                row.update(state=AttemptState.RUNNING, node_id=node, gpus=[f"GPU-{node}-{g}"], claimed_at=now,
                           started_at=now - timedelta(seconds=rng.randint(0, 600)))
            attempts.append(row)
        for table, rows in ((Job, jobs), (Op, ops), (Attempt, attempts)):
            for start in range(0, len(rows), 5000):
                session.execute(insert(table), rows[start:start + 5000])
        session.commit()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--setup", choices=["embedded", "scaled"], default="embedded")
    args = parser.parse_args()
    rng = random.Random(1)

    rooms, wants, use, now = plain_values(args.nodes, args.waiting, rng)
    planned = []
    for _ in range(args.runs):
        fresh = [NodeRoom(id=r.id, name=r.name, gpu_vram=r.gpu_vram, qualifies=r.qualifies,
                          busy_until=dict(r.busy_until), markets=r.markets) for r in rooms]
        began = time.perf_counter()
        plan(rank(wants, use), fresh, now=now)
        planned.append(time.perf_counter() - began)

    with tempfile.TemporaryDirectory() as tmp, store_and_broker(args.setup, Path(tmp)) as (url, _broker):
        upgrade(url)
        fill_store(url, args.nodes, args.waiting, rng)
        engine = create_engine(url)
        reads, passes = [], []
        for _ in range(args.runs):
            with Session(engine) as session:
                began = time.perf_counter()
                rows = session.execute(_wants_query()).all()
                reads.append(time.perf_counter() - began)
            with Session(engine) as session:
                began = time.perf_counter()
                result = run_pass(session, half_life_s=86_400, claim_within_s=5)
                session.commit()
                passes.append(time.perf_counter() - began)
        engine.dispose()
    print_timings(
        f"placement, {args.nodes} nodes (every GPU busy), {args.waiting} waiting attempts ({args.setup} store); "
        f"a pass read {len(rows)} and left {result.waiting} waiting, {result.reserved} with reservations",
        [("read the waiting rows", reads), ("plan alone (plain values)", planned), ("whole pass on the store", passes)],
    )


if __name__ == "__main__":
    main()
