"""Packing: how much of a simulated cluster's GPU time is used while work waits.

    .venv/bin/python -m bench.packing [--ops 40] [--seed 1] [--long]

Three simulated nodes (4, 2 and 2 GPUs) take a mix of 1-, 2- and 4-GPU ops that sleep for 1 to 3
seconds (10 to 30 with --long) instead of running a container, each with a time limit a little over
that (--slack). The baseline is the ideal: all GPU-seconds of work spread perfectly over all GPUs (a
lower bound on the makespan that no scheduler beats). Also printed: how long the 4-GPU ops waited,
and the hand-off, from an op's end to the next op's start on the GPUs it freed.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select

from bench.common import FakeRuntime
from scheduler.models import Attempt, Job
from scheduler.states import JobState
from tests import factories
from tests.stack import Api, Stack
from worker.agent import Agent
from worker.gpus import simulated_inventory
from worker.runtime import Outcome
from worker.settings import WorkerSettings

NODES = {"four": "NVIDIA A100-SXM4-80GB:80x4", "two-a": "NVIDIA GeForce RTX 4090:24x2", "two-b": "NVIDIA GeForce RTX 4090:24x2"}


class SleepRuntime(FakeRuntime):
    """Runs an op by sleeping for the seconds its command names (`sleep N`)."""

    def run(self, spec, on_line, *, on_started=lambda: None, **_):
        on_started()
        time.sleep(float(spec.command[-1].split()[-1]))
        return Outcome(exit_code=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slack", type=int, default=2, help="seconds of time limit beyond what each op runs")
    parser.add_argument("--long", action="store_true", help="ops of 10 to 30 s instead of 1 to 3 s")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lengths = [10.0, 15.0, 20.0, 30.0] if args.long else [1.0, 1.5, 2.0, 3.0]
    mix = [(rng.choice([1, 1, 1, 2, 2, 4]), rng.choice(lengths)) for _ in range(args.ops)]
    total_gpus = 8
    work = sum(gpus * seconds for gpus, seconds in mix)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stack = Stack(root, database_url=f"sqlite:///{root / 'store.sqlite'}",
                      broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}", extra_env={"PEERGRID_HEARTBEAT_INTERVAL": "1"})
        agents = []
        try:
            stack.start_web()
            stack.start_scheduler()
            for name, spec in NODES.items():
                _, token, _ = factories.node(stack.core, name=name)
                agent = Agent(WorkerSettings(server=stack.url, token=token, slots=1, log_interval_s=0.05, job_network="none"),
                              runtime=SleepRuntime(), inventory=simulated_inventory(spec, seed=name))
                threading.Thread(target=agent.run, daemon=True).start()
                agents.append(agent)
            _, user_token = factories.user(stack.core, credits=100_000)
            api = Api(stack.url, user_token)
            time.sleep(2)
            began = time.monotonic()
            for gpus, seconds in mix:
                doc = factories.hello_world("sim", cmd=f"sleep {seconds}")
                doc["ops"][0]["args"]["gpu_count"] = gpus
                # A time limit a little over what it runs, as a user who knows the op would set it:
                # reservations are made from time limits, and backfill fits work before them.
                doc["ops"][0]["args"]["timeout"] = int(seconds) + args.slack
                assert api.post("/jobs", doc).status_code == 201
            engine = create_engine(stack.settings.database_url)
            with engine.connect() as conn:
                while conn.execute(select(func.count()).select_from(Job).where(Job.state == JobState.SUCCEEDED)).scalar() < len(mix):
                    time.sleep(0.1)
                makespan = time.monotonic() - began
                runs = list(conn.execute(select(Attempt.started_at, Attempt.finished_at, Attempt.gpus, Attempt.claimed_at)))
                big_waits = [(started - created).total_seconds() for started, created, gpus in conn.execute(
                    select(Attempt.started_at, Attempt.created_at, Attempt.gpus)) if len(gpus) == 4]
                used = sum(len(gpus) * (end - start).total_seconds() for start, end, gpus, _ in runs)
                handoffs = hand_off_gaps(runs)
                first_submit = conn.execute(select(func.min(Attempt.created_at))).scalar()
                while_waiting = use_while_waiting(runs, first_submit, total_gpus)
            engine.dispose()
        finally:
            for agent in agents:
                agent.stop()
            stack.stop()

    ideal = work / total_gpus
    # A bound no scheduler beats either: only the 4-GPU node runs 4-GPU ops, one after another, and
    # it runs them within the makespan beside its share of the rest.
    four_only = sum(seconds for gpus, seconds in mix if gpus == 4)
    bound = max(ideal, four_only, max(seconds for _, seconds in mix))
    print(f"packing, {len(mix)} ops of 1/2/4 GPUs lasting {lengths[0]:g}-{lengths[-1]:g} s, time limits {args.slack} s "
          f"over, on nodes of 4, 2 and 2 GPUs (seed {args.seed})")
    print(f"{'what':30} {'makespan s':>11} {'GPU use':>8}")
    print(f"{'ideal (work / GPUs)':30} {ideal:11.2f} {1.0:8.0%}")
    print(f"{'bound (4-GPU ops on one node)':30} {bound:11.2f} {work / (total_gpus * bound):8.0%}")
    print(f"{'peergrid':30} {makespan:11.2f} {used / (total_gpus * makespan):8.0%}")
    print(f"ratio of makespans (peergrid / ideal): {makespan / ideal:.2f}")
    print(f"GPU use while work waited (from the first submit to the last op's start): {while_waiting:.0%}")
    if big_waits:
        print(f"4-GPU ops ({len(big_waits)}): waited {sum(big_waits) / len(big_waits):.1f} s on average, "
              f"{max(big_waits):.1f} s at most, of a {makespan:.1f} s makespan")
    if handoffs:
        handoffs.sort()
        print(f"hand-off, a GPU's op ending to its next op starting, where one followed at once ({len(handoffs)}): "
              f"p50 {handoffs[len(handoffs) // 2] * 1000:.0f} ms, p90 {handoffs[int(len(handoffs) * 0.9)] * 1000:.0f} ms")


def use_while_waiting(runs, since, total_gpus: int) -> float:
    """Busy GPU-seconds over available GPU-seconds from since to the last start: while some op
    waited, so any idle GPU then is placement's doing, not the tail's (the last ops running alone)."""
    until = max(start for start, _, _, _ in runs)
    span = (until - since).total_seconds()
    if span <= 0:
        return 1.0
    busy = sum(
        len(gpus) * max(0.0, (min(end, until) - max(start, since)).total_seconds()) for start, end, gpus, _ in runs
    )
    return busy / (total_gpus * span)


def hand_off_gaps(runs) -> list[float]:
    """For each GPU, the time from one attempt's end to the start of the next one claimed on it
    before or within a second of that end (work handed over, not work that arrived later)."""
    by_gpu: dict[str, list] = {}
    for start, end, gpus, claimed in runs:
        for gpu in gpus:
            by_gpu.setdefault(gpu, []).append((start, end, claimed))
    gaps = []
    for spans in by_gpu.values():
        spans.sort()
        for (_, end, _), (start, _, claimed) in zip(spans, spans[1:]):
            if (claimed - end).total_seconds() < 1.0:
                gaps.append(max(0.0, (start - end).total_seconds()))
    return gaps


if __name__ == "__main__":
    main()
