"""Scale: 1,000 simulated nodes heartbeating and 100,000 jobs in the store, against a small store.

    .venv/bin/python -m bench.scale [--nodes 1000] [--jobs 100000] [--setup scaled|embedded|both]
                                    [--requests 60] [--processes N]

For each set-up, two stores are seeded straight into the database: the large one (the nodes and jobs
asked for) and a baseline (10 nodes, 500 jobs). Against each, a real web server (gunicorn with one
process per core, as compose.yaml runs it; `--processes 0` for `peergrid web`) and the scheduler run
while every node heartbeats at the default 10 s interval; meanwhile one person, who owns a
fifth of the jobs, submits, lists and opens jobs through the API and the dashboard, one request at a time.
The table gives p50 and p95 latency of each request kind under that load, the p50 on the large store
before the heartbeats start ("quiet": what the data alone costs), the baseline's figures and the
ratio large/baseline of the p50s; then the store's statement count per request kind, measured
in-process on the same data.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import requests
from sqlalchemy import event, insert, select, text

from bench.common import store_and_broker
from scheduler.accounts import NODE_TOKEN_PREFIX, hash_token
from scheduler.models import Attempt, Job, JobEvent, LogLine, Market, Node, NodeGpu, Op, User
from scheduler.states import AttemptState, JobState, NodeState, OpState, utcnow
from tests import factories
from tests.stack import Stack

HEARTBEAT_INTERVAL_S = 10.0
GPUS_PER_NODE = 2
EVENTS_PER_JOB = 4
LINES_PER_JOB = 3
CHUNK = 5_000
# Seconds of heartbeats alone, before the person's requests, over which their CPU cost is measured.
CPU_PROBE_S = 5.0


@dataclass
class Seeded:
    token: str
    email: str
    node_tokens: list[str]
    big_job: int
    jobs_of_user: int


def _definition(image: str) -> dict:
    return factories.hello_world(image)


def seed(stack: Stack, *, nodes: int, jobs: int, image: str, rng: random.Random) -> Seeded:
    """Fill the store: providers with nodes and GPUs, people with finished jobs, one measured person."""
    core = stack.core
    email = "bench@example.com"
    user_id, token = factories.user(core, email=email, credits=10_000_000)
    password_hash = core.engine.connect().execute(select(User.password_hash).where(User.id == user_id)).scalar()
    now = utcnow()
    with core.engine.begin() as conn:
        market_id = conn.execute(select(Market.id).where(Market.slug == "cpu")).scalar_one()
        first_user = conn.execute(text("SELECT max(id) FROM users")).scalar() + 1
        others = max(1, nodes // 10) + 99
        conn.execute(
            insert(User),
            [
                {"id": first_user + i, "email": f"other{i}@example.com", "password_hash": password_hash,
                 "is_admin": False, "created_at": now}
                for i in range(others)
            ],
        )
        node_tokens = [f"{NODE_TOKEN_PREFIX}bench-{i:06d}-{rng.getrandbits(64):016x}" for i in range(nodes)]
        first_node = (conn.execute(text("SELECT max(id) FROM nodes")).scalar() or 0) + 1
        _chunks(conn, Node, (
            {"id": first_node + i, "owner_id": first_user + i % max(1, nodes // 10), "name": f"node-{i:06d}",
             "token_hash": hash_token(node_tokens[i]), "state": NodeState.ONLINE, "simulated": True,
             "cpu_count": 16, "memory_mb": 65536, "slots": 1, "created_at": now, "registered_at": now,
             "last_heartbeat_at": now}
            for i in range(nodes)
        ))
        _chunks(conn, NodeGpu, (
            {"node_id": first_node + i, "index": k, "uuid": _gpu_uuid(i, k), "name": "NVIDIA GeForce RTX 4090",
             "memory_total_mb": 24564, "memory_free_mb": 24000, "compute_capability": "8.9",
             "driver_version": "550.54", "cuda_version": "12.4", "utilization_pct": 0, "temperature_c": 40}
            for i in range(nodes) for k in range(GPUS_PER_NODE)
        ))
        definition = _definition(image)
        spec = {"image": image, "cmd": ["echo", "hello", "world"]}
        first_job = (conn.execute(text("SELECT max(id) FROM jobs")).scalar() or 0) + 1
        owners = [user_id if j % 5 == 0 else first_user + nodes // 10 + rng.randrange(99) for j in range(jobs)]
        started = now - timedelta(days=30)

        def when(j: int, extra: float = 0.0):
            return started + timedelta(seconds=j * (30 * 86400 / max(1, jobs)) + extra)

        _chunks(conn, Job, (
            {"id": first_job + j, "owner_id": owners[j], "state": JobState.SUCCEEDED if j % 50 else JobState.FAILED,
             "definition": definition, "max_cost": 3_600_000, "reserved": 0, "cost": 2_000,
             "created_at": when(j), "started_at": when(j, 1), "finished_at": when(j, 3)}
            for j in range(jobs)
        ))
        _chunks(conn, Op, (
            {"id": first_job + j, "job_id": first_job + j, "key": "hello-world", "position": 0,
             "type": "container/run", "group": None, "depends_on": [], "after": [], "result_rules": {},
             "stop_if_dependent_stops": False, "spec": spec, "market_id": market_id,
             "state": OpState.SUCCEEDED if j % 50 else OpState.FAILED, "timeout_s": 3600, "max_attempts": 1,
             "exit_code": 0 if j % 50 else 1, "results": {}, "started_at": when(j, 1), "finished_at": when(j, 3)}
            for j in range(jobs)
        ))
        _chunks(conn, Attempt, (
            {"id": first_job + j, "op_id": first_job + j, "number": 1,
             "state": AttemptState.SUCCEEDED if j % 50 else AttemptState.FAILED,
             "node_id": first_node + j % nodes, "gpus": [], "created_at": when(j), "offered_at": when(j),
             "claimed_at": when(j, 0.5), "started_at": when(j, 1), "finished_at": when(j, 3),
             "exit_code": 0 if j % 50 else 1, "cost": 2_000, "cost_note": "2 s × 1,000 µcr", "last_log_seq": LINES_PER_JOB}
            for j in range(jobs)
        ))
        kinds = ["submitted", "claimed", "started", "exited"]
        _chunks(conn, JobEvent, (
            {"job_id": first_job + j, "op_id": first_job + j, "attempt_id": first_job + j if e else None,
             "kind": kinds[e], "message": f"{kinds[e]} on node-{j % nodes:06d}", "created_at": when(j, e)}
            for j in range(jobs) for e in range(EVENTS_PER_JOB)
        ))
        _chunks(conn, LogLine, (
            {"job_id": first_job + j, "op_id": first_job + j, "attempt_id": first_job + j, "seq": s + 1,
             "stream": "stdout", "text": f"line {s + 1} of job {first_job + j}", "logged_at": when(j, 1 + s * 0.5)}
            for j in range(jobs) for s in range(LINES_PER_JOB)
        ))
        if conn.dialect.name == "postgresql":
            for table in ("users", "nodes", "jobs", "ops", "attempts"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    if core.engine.dialect.name == "postgresql":
        # As autovacuum leaves a live store: statistics current, visibility maps set.
        with core.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    # The job opened in the measurements: the person's latest, a three-op workflow that really ran.
    big_job = _workflow_job(stack, token, image)
    return Seeded(token=token, email=email, node_tokens=node_tokens, big_job=big_job,
                  jobs_of_user=sum(1 for o in owners if o == user_id))


def _workflow_job(stack: Stack, token: str, image: str) -> int:
    body = {
        "version": "0.1",
        "type": "container",
        "ops": [
            {"type": "container/run", "id": f"step-{k}", "args": {"image": image, "cmd": ["echo", str(k)]},
             **({"execution": {"depends_on": [f"step-{k - 1}"]}} if k else {})}
            for k in range(3)
        ],
    }
    response = requests.post(f"{stack.url}/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return response.json()["id"]


def _gpu_uuid(node: int, k: int) -> str:
    return f"GPU-bench-{node:06d}-{k}"


def _chunks(conn, model, rows: Iterator[dict]) -> None:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            conn.execute(insert(model), batch)
            batch = []
    if batch:
        conn.execute(insert(model), batch)


class HeartbeatLoad:
    """Every node posts a heartbeat once per interval, spread evenly, from a pool of threads."""

    def __init__(self, url: str, tokens: list[str], *, interval_s: float, threads: int = 24):
        self.url = url + "/api/v1/node/heartbeat"
        self.tokens = tokens
        self.interval_s = interval_s
        # No more threads than nodes: a thread without nodes would spin.
        self.threads = max(1, min(threads, len(tokens)))
        self.latencies: list[float] = []
        self.late = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self.began = time.monotonic()
        for t in range(self.threads):
            worker = threading.Thread(target=self._run, args=(t,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        self.elapsed = time.monotonic() - self.began

    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def _run(self, t: int) -> None:
        http = requests.Session()
        mine = range(t, len(self.tokens), self.threads)
        spacing = self.interval_s / len(self.tokens)
        bodies = {
            i: {"gpus": [{"index": k, "uuid": _gpu_uuid(i, k), "name": "NVIDIA GeForce RTX 4090",
                          "memory_total_mb": 24564, "memory_free_mb": 24000, "compute_capability": "8.9",
                          "driver_version": "550.54", "cuda_version": "12.4", "utilization_pct": 0,
                          "temperature_c": 40} for k in range(GPUS_PER_NODE)],
                "simulated": True, "cpu_count": 16, "memory_mb": 65536, "slots": 1, "running": [],
                "agent_version": "bench", "hostname": f"host-{i}"}
            for i in mine
        }
        round_ = 0
        while not self._stop.is_set():
            for i in mine:
                due = self.began + round_ * self.interval_s + i * spacing
                wait = due - time.monotonic()
                if wait > 0:
                    if self._stop.wait(wait):
                        return
                elif wait < -self.interval_s:
                    with self._lock:
                        self.late += 1
                began = time.monotonic()
                try:
                    response = http.post(self.url, json=bodies[i],
                                         headers={"Authorization": f"Bearer {self.tokens[i]}"}, timeout=30)
                    ok = response.status_code == 200
                except requests.RequestException:
                    ok = False
                with self._lock:
                    if ok:
                        self.latencies.append(time.monotonic() - began)
                    else:
                        self.errors += 1
            round_ += 1


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user and system) used so far by the live processes of a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


def machine_busy_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


@dataclass
class CpuProbe:
    """What heartbeats alone cost: the web's CPU per heartbeat and the machine's busy share."""

    heartbeats: int
    web_ms_per_heartbeat: float
    machine_busy: float


def probe_cpu(load: "HeartbeatLoad", web_pgid: int, seconds: float) -> CpuProbe:
    """Measure while only the heartbeats run (the person waits)."""
    web0, (busy0, all0), n0 = group_cpu_s(web_pgid), machine_busy_s(), len(load.latencies)
    time.sleep(seconds)
    web1, (busy1, all1), n1 = group_cpu_s(web_pgid), machine_busy_s(), len(load.latencies)
    beats = max(1, n1 - n0)
    return CpuProbe(beats, (web1 - web0) * 1000 / beats, (busy1 - busy0) / max(1e-9, all1 - all0))


Requests = dict[str, Callable[[], requests.Response]]


def person_requests(url: str, seeded: Seeded, image: str) -> Requests:
    """The measured person's requests over HTTP, each a callable returning the response."""
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {seeded.token}"
    pages = requests.Session()
    form = pages.get(url + "/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    pages.post(url + "/login", data={"email": seeded.email, "password": factories.PASSWORD, "csrf_token": csrf},
               timeout=30).raise_for_status()
    deep = max(1, seeded.jobs_of_user // 25 // 2)
    job = seeded.big_job
    return {
        "submit (API)": lambda: api.post(url + "/api/v1/jobs", json=_definition(image), timeout=30),
        "job list (API)": lambda: api.get(url + "/api/v1/jobs", timeout=30),
        f"job list p.{deep} (API)": lambda: api.get(url + f"/api/v1/jobs?page={deep}", timeout=30),
        "job (API)": lambda: api.get(url + f"/api/v1/jobs/{job}", timeout=30),
        "jobs page": lambda: pages.get(url + "/jobs", timeout=30),
        "job page": lambda: pages.get(url + f"/jobs/{job}", timeout=30),
        "overview page": lambda: pages.get(url + "/", timeout=30),
    }


def measure(kinds: Requests, rounds: int) -> dict[str, list[float]]:
    """Latency of each kind, round-robin, one request at a time."""
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, call in kinds.items():
            began = time.monotonic()
            response = call()
            took = time.monotonic() - began
            assert response.status_code < 400, (name, response.status_code, response.text[:300])
            times[name].append(took)
    return times


def count_statements(stack: Stack, seeded: Seeded, image: str) -> dict[str, int]:
    """Statements the store runs for each request kind, in-process on the same data."""
    from web import create_app

    from scheduler.hearing import Ears

    app = create_app(stack.settings)
    # As a serving process has it: heard times wait for its hearing thread (here never run).
    app.extensions["peergrid.ears"] = Ears(app.extensions["peergrid"], "bench-count")
    engine = app.extensions["peergrid"].engine
    counted = [0]

    def tally(*_):
        counted[0] += 1

    event.listen(engine, "before_cursor_execute", tally)
    api = app.test_client()
    auth = {"Authorization": f"Bearer {seeded.token}"}
    node_auth = {"Authorization": f"Bearer {seeded.node_tokens[0]}"}
    pages = app.test_client()
    with pages.session_transaction() as s:
        s["user_id"] = _user_id(stack, seeded.email)
    heartbeat = {"gpus": [{"index": k, "uuid": _gpu_uuid(0, k), "name": "NVIDIA GeForce RTX 4090"} for k in range(GPUS_PER_NODE)],
                 "simulated": True, "running": []}
    calls = {
        "heartbeat": lambda: api.post("/api/v1/node/heartbeat", json=heartbeat, headers=node_auth),
        "submit (API)": lambda: api.post("/api/v1/jobs", json=_definition(image), headers=auth),
        "job list (API)": lambda: api.get("/api/v1/jobs", headers=auth),
        "job (API)": lambda: api.get(f"/api/v1/jobs/{seeded.big_job}", headers=auth),
        "jobs page": lambda: pages.get("/jobs"),
        "job page": lambda: pages.get(f"/jobs/{seeded.big_job}"),
        "overview page": lambda: pages.get("/"),
    }
    counts = {}
    for name, call in calls.items():
        call()  # warm caches (market list, compiled statements)
        counted[0] = 0
        response = call()
        assert response.status_code < 400, (name, response.status_code)
        counts[name] = counted[0]
    event.remove(engine, "before_cursor_execute", tally)
    app.extensions["peergrid"].close()
    return counts


def _user_id(stack: Stack, email: str) -> int:
    with stack.core.engine.connect() as conn:
        return conn.execute(select(User.id).where(User.email == email)).scalar_one()


@dataclass
class Figures:
    times: dict[str, list[float]]
    # The same requests before the heartbeats start: what the data alone costs.
    quiet: dict[str, list[float]]
    heartbeat: HeartbeatLoad
    statements: dict[str, int]
    seed_s: float
    cpu: CpuProbe | None


@contextmanager
def running_stack(setup: str, root: Path) -> Iterator[Stack]:
    with store_and_broker(setup, root) as (database_url, broker_url):
        with Stack(root, database_url=database_url, broker_url=broker_url,
                   extra_env={"PEERGRID_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL_S),
                              "PEERGRID_NODE_TIMEOUT": "60"}) as stack:
            yield stack


def one_store(
    setup: str, *, nodes: int, jobs: int, rounds: int, image: str, rng: random.Random, processes: int,
    cpu_probe_s: float = 0.0,
) -> Figures:
    with tempfile.TemporaryDirectory() as tmp, running_stack(setup, Path(tmp)) as stack:
        stack.start_web(processes=processes)
        began = time.monotonic()
        seeded = seed(stack, nodes=nodes, jobs=jobs, image=image, rng=rng)
        seed_s = time.monotonic() - began
        stack.start_scheduler()
        kinds = person_requests(stack.url, seeded, image)
        measure(kinds, 3)  # every server process warmed up
        quiet = measure(kinds, max(1, rounds // 2))
        load = HeartbeatLoad(stack.url, seeded.node_tokens, interval_s=HEARTBEAT_INTERVAL_S)
        load.start()
        time.sleep(1)
        cpu = probe_cpu(load, stack.process("web").pid, cpu_probe_s) if cpu_probe_s else None
        times = measure(kinds, rounds)
        load.stop()
        statements = count_statements(stack, seeded, image)
        return Figures(times=times, quiet=quiet, heartbeat=load, statements=statements, seed_s=seed_s, cpu=cpu)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(setup: str, nodes: int, jobs: int, big: Figures, small: Figures, server: str) -> None:
    print(f"\n{setup}, {server}: {nodes} nodes heartbeating every {HEARTBEAT_INTERVAL_S:.0f} s and {jobs} jobs "
          f"(seeded in {big.seed_s:.0f} s), against 10 nodes and 500 jobs")
    print(f"{'request':26} {'p50 ms':>8} {'p95 ms':>8} {'quiet p50':>10} {'base p50':>9} {'base p95':>9} "
          f"{'× base':>7} {'queries':>8} {'base q':>7}")
    rows = [("heartbeat", big.heartbeat.latencies, None, small.heartbeat.latencies)]
    rows += [(name, big.times[name], big.quiet[name], small.times[small_name])
             for name, small_name in zip(big.times, small.times)]
    for name, ours, quiet, base in rows:
        key = re.sub(r" p\.\d+", "", name)
        q = big.statements.get(key, "") if key == name else ""
        bq = small.statements.get(key, "") if key == name else ""
        quiet_p50 = f"{pct(quiet, .5):10.1f}" if quiet else f"{'-':>10}"
        print(f"{name:26} {pct(ours, .5):8.1f} {pct(ours, .95):8.1f} {quiet_p50} {pct(base, .5):9.1f} {pct(base, .95):9.1f} "
              f"{statistics.median(ours) / statistics.median(base):7.2f} {q!s:>8} {bq!s:>7}")
    hb = big.heartbeat
    print(f"heartbeats: {len(hb.latencies)} answered at {hb.rate():.1f}/s (target {nodes / HEARTBEAT_INTERVAL_S:.0f}/s), "
          f"{hb.errors} failed, {hb.late} more than an interval late")
    # (Measured on the large store only: the baseline's 10 nodes send too few for a figure per heartbeat.)
    cpu = big.cpu
    print(f"heartbeats alone, {CPU_PROBE_S:.0f} s before the person's requests ({cpu.heartbeats} heartbeats): "
          f"web {cpu.web_ms_per_heartbeat:.2f} ms CPU each, machine {cpu.machine_busy:.0%} busy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60, help="rounds of the person's requests per store")
    parser.add_argument("--setup", choices=["embedded", "scaled", "both"], default="scaled")
    parser.add_argument("--image", default="peergrid-test/busybox:latest")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="gunicorn processes (0: one `peergrid web` process)")
    args = parser.parse_args()
    setups = ["embedded", "scaled"] if args.setup == "both" else [args.setup]
    for setup in setups:
        rng = random.Random(7)
        common = dict(rounds=args.requests, image=args.image, rng=rng, processes=args.processes)
        small = one_store(setup, nodes=10, jobs=500, **common)
        big = one_store(setup, nodes=args.nodes, jobs=args.jobs, cpu_probe_s=CPU_PROBE_S, **common)
        server = f"gunicorn, {args.processes} processes × 4 threads" if args.processes else "peergrid web (waitress, 8 threads)"
        report(setup, args.nodes, args.jobs, big, small, server)


if __name__ == "__main__":
    main()
