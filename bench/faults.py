"""The fault campaign: faults injected into a running peergrid, each trial checked for lost jobs,
double charges and balanced books, with the time the system took to recover.

    .venv/bin/python -m bench.faults [--trials 5] [--worker-kills 100] [--only a,b] [--node-timeout 3]

It runs the scaled set-up on servers of its own, on loopback: a PostgreSQL cluster and a Redis it
may stop, gunicorn for the web, the scheduler, and two workers, with a short node timeout. Every
scenario runs `--trials` times except the worker kill, which runs `--worker-kills` times. For each it
prints trials, passed, lost jobs, double charges, books balanced, and recovery min/median/max.

A job is lost when it did not succeed; a double charge is an op billed for more than one attempt
though it ran to success once, or any attempt billed that its node lost or gave back. Recovery is the
time from the fault to the moment the work it interrupted runs again (or, where nothing was
interrupted, to the system doing new work).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from scheduler.ledger import check_books
from tests import factories
from tests.factories import hello_world
from tests.outages import PrivatePostgres, wait_until
from tests.stack import Api, Stack, free_port

IMAGE = os.environ.get("PEERGRID_TEST_IMAGE", "peergrid-test/busybox:latest")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Trial:
    passed: bool
    lost: int = 0
    double: int = 0
    balanced: bool = True
    recovery_s: float | None = None
    note: str = ""


@dataclass
class Tally:
    name: str
    trials: list[Trial] = field(default_factory=list)

    def row(self) -> str:
        n = len(self.trials)
        recoveries = [t.recovery_s for t in self.trials if t.recovery_s is not None]
        rec = (f"{min(recoveries):6.2f} {statistics.median(recoveries):6.2f} {max(recoveries):6.2f}"
               if recoveries else f"{'–':>6} {'–':>6} {'–':>6}")
        return (f"{self.name:22} {n:6} {sum(t.passed for t in self.trials):6} {sum(t.lost for t in self.trials):5} "
                f"{sum(t.double for t in self.trials):6} {sum(t.balanced for t in self.trials):4}/{n:<3} {rec}")


class Redis:
    """A Redis of the campaign's own, without persistence, that it may stop and start."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.root = root
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=(self.root / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )
        import redis

        wait_until(lambda: _pings(redis.Redis.from_url(self.url)), 20, "redis did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class Cluster:
    """The scaled set-up under test, with what each trial needs to reach it."""

    def __init__(self, root: Path, node_timeout: float):
        self.root = root
        self.pg = PrivatePostgres()
        self.pg.start()
        self.redis = Redis(root)
        self.redis.start()
        env = {"PEERGRID_NODE_TIMEOUT": str(node_timeout), "PEERGRID_HEARTBEAT_INTERVAL": "1",
               "PEERGRID_REOFFER_AFTER": "2", "PEERGRID_TIMEOUT_GRACE": "10"}
        self.stack = Stack(root, database_url=self.pg.url, broker_url=self.redis.url, extra_env=env)
        self.stack.start_web(processes=2)
        self.stack.start_scheduler()
        self.tokens: dict[str, str] = {}
        self.node_ids: dict[str, int] = {}
        for name in ("worker-a", "worker-b"):
            node_id, token, _ = factories.node(self.stack.core, name=name)
            self.tokens[name], self.node_ids[name] = token, node_id
            self.start_worker(name)
        _, self.api_token = factories.user(self.stack.core, credits=1_000_000)
        self.api = Api(self.stack.url, self.api_token)
        self.api.wait(self.submit(hello_world(IMAGE)), timeout=120)  # warm: both set up, the image at hand

    def start_worker(self, name: str, *args: str) -> subprocess.Popen:
        return self.stack.start_worker(self.tokens[name], *args, name=name)

    def process(self, name: str) -> subprocess.Popen | None:
        return next((p for n, p, _ in reversed(self.stack.processes) if n == name and p.poll() is None), None)

    def submit(self, definition: dict) -> int:
        response = self.api.post("/jobs", definition)
        response.raise_for_status()
        return response.json()["id"]

    def job(self, job_id: int) -> dict:
        for _ in range(100):  # the web may be coming back
            try:
                return self.api.get(f"/jobs/{job_id}")
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} cannot be read")

    def running_on(self, job_id: int) -> str | None:
        """The worker whose attempt of the job's first op runs now."""
        op = self.job(job_id)["ops"][0]
        attempts = op["attempts"]
        if op["state"] != "running" or not attempts or attempts[-1]["state"] != "running":
            return None
        node = attempts[-1].get("node") or {}
        return next((n for n, i in self.node_ids.items() if i == node.get("id")), None)

    def settle(self, job_ids: list[int], timeout: float = 120) -> Trial:
        """Wait for the jobs to end; count what was lost or charged twice, and check the books."""
        deadline = time.monotonic() + timeout
        bodies = {}
        for job_id in job_ids:
            while True:
                body = self.job(job_id)
                if body["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            bodies[job_id] = body
        lost = sum(1 for b in bodies.values() if b["state"] != "succeeded")
        double = 0
        for body in bodies.values():
            for op in body["ops"]:
                billed = [a for a in op["attempts"] if a["cost"] > 0]
                unearned = [a for a in billed if a["state"] in ("lost", "cancelled")]
                if unearned or (op["state"] == "succeeded" and len(billed) > 1 + _failed_tries(op)):
                    double += 1
        with self.stack.core.transaction() as session:
            books = check_books(session)
        note = "; ".join(f"job {i} {b['state']}" for i, b in bodies.items() if b["state"] != "succeeded")
        return Trial(passed=lost == 0 and double == 0 and books.balanced, lost=lost, double=double,
                     balanced=books.balanced, note=note or "; ".join(books.problems[:2]))

    def close(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.redis.stop()
            self.pg.close()


def _failed_tries(op: dict) -> int:
    """Attempts that ran and failed on their own (a retry's earlier tries are billed, rightly)."""
    return sum(1 for a in op["attempts"] if a["state"] == "failed")


def _sleeper(seconds: float) -> dict:
    return hello_world(IMAGE, ["sh", "-c", f"sleep {seconds}; echo done"])


def _until_running_again(cluster: Cluster, job_id: int, before: int, began: float, timeout: float = 60) -> float:
    """Seconds from began until the job's first op has a newer attempt than `before` running (or done)."""
    def again():
        op = cluster.job(job_id)["ops"][0]
        newer = [a for a in op["attempts"] if a["id"] > before and a["state"] in ("running", "succeeded")]
        return bool(newer) or (op["state"] == "succeeded" and op["attempts"][-1]["id"] == before)
    wait_until(again, timeout, f"job {job_id} did not run again")
    return time.monotonic() - began


def _new_work_then_settle(cluster: Cluster, job_ids: list[int], began: float) -> Trial:
    """Recovery is when a job submitted after the fault has run; then settle it with the others."""
    probe = cluster.submit(hello_world(IMAGE))
    wait_until(lambda: cluster.job(probe)["state"] == "succeeded", 60, "no new work ran after the fault")
    recovery = time.monotonic() - began
    result = cluster.settle([*job_ids, probe])
    result.recovery_s = recovery
    return result


def _attempt_of(cluster: Cluster, job_id: int) -> int:
    return cluster.job(job_id)["ops"][0]["attempts"][-1]["id"]


# -- scenarios -------------------------------------------------------------------------------


def worker_kill(cluster: Cluster, trial: int) -> Trial:
    """kill -9 the worker running an op; every other trial it comes back at once, else its node times out."""
    job_id = cluster.submit(_sleeper(2))
    worker = wait_until(lambda: cluster.running_on(job_id), 60, "the op did not start")
    before = _attempt_of(cluster, job_id)
    process = cluster.process(worker)
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if trial % 2 == 0:
        cluster.start_worker(worker)
        recovery = _until_running_again(cluster, job_id, before, began)
    else:
        recovery = _until_running_again(cluster, job_id, before, began)
        cluster.start_worker(worker)
    result = cluster.settle([job_id])
    result.recovery_s = recovery
    return result


def scheduler_kill(cluster: Cluster, trial: int) -> Trial:
    """kill -9 the scheduler while a three-op workflow runs; start it again a second later."""
    chain = {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": key, "args": {"image": IMAGE, "cmd": ["sh", "-c", "sleep 1; echo ok"]},
         "execution": {"depends_on": [prev] if prev else []}}
        for key, prev in (("a", None), ("b", "a"), ("c", "b"))]}
    job_id = cluster.submit(chain)
    wait_until(lambda: cluster.job(job_id)["ops"][0]["state"] == "running", 60, "the workflow did not start")
    began = time.monotonic()
    cluster.stack.kill("scheduler")
    time.sleep(1)
    cluster.stack.start_scheduler()
    return _new_work_then_settle(cluster, [job_id], began)


def redis_restart(cluster: Cluster, trial: int) -> Trial:
    """Restart the broker (its queued offers are gone: nothing is persisted) while an op runs."""
    running = cluster.submit(_sleeper(3))
    wait_until(lambda: cluster.running_on(running), 60, "the op did not start")
    began = time.monotonic()
    cluster.redis.stop()
    queued = cluster.submit(hello_world(IMAGE))  # its offer goes nowhere: the broker is down
    time.sleep(1)
    cluster.redis.start()
    wait_until(lambda: cluster.job(queued)["state"] == "succeeded", 60, "the offer lost with the broker never ran")
    result = cluster.settle([running, queued])
    result.recovery_s = time.monotonic() - began
    return result


def postgres_restart(cluster: Cluster, trial: int) -> Trial:
    """Stop the store for 3 s while an op runs, then start it again."""
    job_id = cluster.submit(_sleeper(4))
    wait_until(lambda: cluster.running_on(job_id), 60, "the op did not start")
    began = time.monotonic()
    cluster.pg.stop()
    time.sleep(3)
    cluster.pg.start()
    return _new_work_then_settle(cluster, [job_id], began)


def server_outage(cluster: Cluster, trial: int) -> Trial:
    """Take the web away for twice the node timeout while an op runs: no node may be blamed."""
    timeout = cluster.stack.settings.node_timeout_s
    job_id = cluster.submit(_sleeper(2 * timeout + 4))
    wait_until(lambda: cluster.running_on(job_id), 60, "the op did not start")
    cluster.stack.kill("web")
    time.sleep(2 * timeout)
    began = time.monotonic()
    cluster.stack.start_web(processes=2)
    result = cluster.settle([job_id])
    attempts = cluster.job(job_id)["ops"][0]["attempts"]
    if len(attempts) != 1:
        result.passed, result.note = False, f"{len(attempts)} attempts: a node was blamed for the outage"
    result.recovery_s = time.monotonic() - began
    return result


def undelivered_report(cluster: Cluster, trial: int) -> Trial:
    """The op ends while the web is down, past the node timeout: its report must still arrive."""
    timeout = cluster.stack.settings.node_timeout_s
    job_id = cluster.submit(_sleeper(1))
    wait_until(lambda: cluster.running_on(job_id), 60, "the op did not start")
    cluster.stack.kill("web")
    time.sleep(timeout + 3)
    began = time.monotonic()
    cluster.stack.start_web(processes=2)
    result = cluster.settle([job_id])
    body = cluster.job(job_id)
    attempts = body["ops"][0]["attempts"]
    if len(attempts) != 1:
        result.passed, result.note = False, f"{len(attempts)} attempts: the finished report was lost"
    result.recovery_s = time.monotonic() - began
    return result


def web_kill_burst(cluster: Cluster, trial: int) -> Trial:
    """Submit ten jobs through the CLI while the web is killed mid-burst; exactly ten must exist."""
    definition = cluster.root / "burst.json"
    definition.write_text(json.dumps(hello_world(IMAGE)))
    env = {**os.environ, "PEERGRID_SERVER": cluster.stack.url, "PEERGRID_TOKEN": cluster.api_token}
    before = _jobs_since(cluster, set())
    clients = [subprocess.Popen([sys.executable, "-m", "cli", "job", "submit", str(definition)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
    time.sleep(0.3)
    began = time.monotonic()
    cluster.stack.kill("web")
    time.sleep(1)
    cluster.stack.start_web(processes=2)
    said = [c.communicate(timeout=120) for c in clients]
    printed = {int(out.strip()) for out, _ in said if out.strip().isdigit()}
    made = _jobs_since(cluster, before)
    result = cluster.settle(sorted(made))
    if len(made) != 10 or printed != made:
        result.passed = False
        result.note = f"{len(made)} jobs made, {len(printed)} ids printed for 10 submits"
        result.lost += max(0, 10 - len(made))
        result.double += max(0, len(made) - 10)
    result.recovery_s = time.monotonic() - began
    return result


def _jobs_since(cluster: Cluster, before: set[int]) -> set[int]:
    found, page = set(), 1
    while True:
        body = cluster.api.get("/jobs", page=page)
        ids = {j["id"] for j in body.get("jobs", [])}
        found |= ids
        if not ids or page >= body.get("pages", 1):
            return found - before
        page += 1


def hostile_input(cluster: Cluster, trial: int) -> Trial:
    """Input meant to break the server: every one must be refused with a 4xx, and the server serve on."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {cluster.api_token}"
    url = cluster.stack.url + "/api/v1"
    nested = "[" * 100_000 + "]" * 100_000
    bad_op = hello_world(IMAGE)
    bad_op["ops"][0]["args"]["env"] = {"A": "x\u0000y"}
    newline_id = hello_world(IMAGE)
    newline_id["ops"][0]["id"] = "a\n"
    huge = {"version": "0.1", "ops": [
        {"type": "container/run", "id": f"op{i}", "args": {"image": IMAGE}} for i in range(10_000)]}
    tries = [
        ("deep JSON", lambda: http.post(url + "/jobs", data=nested, headers={"Content-Type": "application/json"})),
        ("NUL in a node name", lambda: http.post(url + "/nodes", json={"name": "a\u0000b"})),
        ("NUL in env", lambda: http.post(url + "/jobs", json=bad_op)),
        ("op id ending in a newline", lambda: http.post(url + "/jobs", json=newline_id)),
        ("10,000 ops", lambda: http.post(url + "/jobs", json=huge, timeout=60)),
    ]
    began = time.monotonic()
    wrong = [f"{what}: {r.status_code}" for what, call in tries if not 400 <= (r := call()).status_code < 500]
    probe = cluster.submit(hello_world(IMAGE))
    result = cluster.settle([probe])
    if wrong:
        result.passed, result.note = False, "; ".join(wrong)
    result.recovery_s = time.monotonic() - began
    return result


def embedded_killed(cluster: Cluster, trial: int) -> Trial:
    """`peergrid up` killed whole (kill -9 of its process group) mid-op, then started again."""
    data = cluster.root / f"up-{trial}"
    port = free_port()
    env = {**os.environ, "PEERGRID_NODE_TIMEOUT": "3", "PEERGRID_HEARTBEAT_INTERVAL": "1", "PYTHONUNBUFFERED": "1",
           "PEERGRID_DATABASE_URL": "", "PEERGRID_BROKER_URL": "", "PEERGRID_REOFFER_AFTER": "2"}

    def up() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cli", "up", "--data-dir", str(data), "--port", str(port)],
                                env=env, cwd=ROOT, stdout=(data.parent / f"up-{trial}.log").open("a"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    data.mkdir()
    first = up()
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_until(lambda: _ok(url + "/health"), 60, "peergrid up did not come up")
        token = subprocess.run([sys.executable, "-m", "cli", "admin", "create-token", "admin@peergrid.local"],
                               env={**env, "PEERGRID_DATA_DIR": str(data)}, cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        api = Api(f"http://127.0.0.1:{port}", token)
        job_id = api.post("/jobs", _sleeper(2)).json()["id"]
        wait_until(lambda: api.get(f"/jobs/{job_id}")["ops"][0]["state"] == "running", 60, "the op did not start")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        began = time.monotonic()
        second = up()
        try:
            wait_until(lambda: _ok(url + "/health"), 60, "peergrid up did not come back")
            body = api.wait(job_id, timeout=90)
            recovery = time.monotonic() - began
            attempts = body["ops"][0]["attempts"]
            double = int(sum(1 for a in attempts if a["cost"] > 0) > 1
                         or any(a["cost"] > 0 and a["state"] == "lost" for a in attempts))
            return Trial(passed=body["state"] == "succeeded" and not double, lost=int(body["state"] != "succeeded"),
                         double=double, recovery_s=recovery, note=body["state"])
        finally:
            second.send_signal(signal.SIGINT)
            try:
                second.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def two_clusters(cluster: Cluster, trial: int) -> Trial:
    """A second cluster's worker starts, and restarts, on the same Docker engine while ours runs an op."""
    root = cluster.root / f"other-{trial}"
    root.mkdir()
    job_id = cluster.submit(_sleeper(4))
    wait_until(lambda: cluster.running_on(job_id), 60, "the op did not start")
    began = time.monotonic()
    with Stack(root, database_url=f"sqlite:///{root / 'store.sqlite'}",
               broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}") as other:
        other_api = other.start_with_node("worker-a")  # the same node name, and likely the same node id
        other_job = other_api.post("/jobs", hello_world(IMAGE)).json()["id"]
        assert other_api.wait(other_job, timeout=60)["state"] == "succeeded", other.logs()
        other.kill("worker")
    result = cluster.settle([job_id])
    attempts = cluster.job(job_id)["ops"][0]["attempts"]
    if len(attempts) != 1:
        result.passed, result.note = False, f"{len(attempts)} attempts: the other cluster touched ours"
    result.recovery_s = time.monotonic() - began
    return result


SCENARIOS: dict[str, Callable[[Cluster, int], Trial]] = {
    "worker-kill": worker_kill,
    "scheduler-kill": scheduler_kill,
    "web-kill-burst": web_kill_burst,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "server-outage": server_outage,
    "undelivered-report": undelivered_report,
    "embedded-killed": embedded_killed,
    "two-clusters": two_clusters,
    "hostile-input": hostile_input,
}


def run(names: list[str], trials: int, worker_kills: int, node_timeout: float) -> list[Tally]:
    tallies = []
    with tempfile.TemporaryDirectory(prefix="peergrid-faults-") as root:
        cluster = Cluster(Path(root), node_timeout)
        try:
            for name in names:
                tally = Tally(name)
                count = worker_kills if name == "worker-kill" else trials
                for i in range(count):
                    try:
                        tally.trials.append(SCENARIOS[name](cluster, i))
                    except Exception as e:  # a trial that could not even finish counts as failed, and says why
                        tally.trials.append(Trial(passed=False, note=f"{type(e).__name__}: {str(e)[:300]}"))
                    if not tally.trials[-1].passed:
                        print(f"  {name} trial {i}: FAILED {tally.trials[-1].note}", file=sys.stderr, flush=True)
                tallies.append(tally)
                print(tally.row(), flush=True)
        finally:
            cluster.close()
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials of each scenario but the worker kill")
    parser.add_argument("--worker-kills", type=int, default=100)
    parser.add_argument("--only", help=f"comma-separated scenarios, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--node-timeout", type=float, default=3.0)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    print(f"fault campaign: scaled set-up (PostgreSQL, Redis, gunicorn ×2, scheduler, 2 workers), "
          f"node timeout {args.node_timeout:g} s; aim: recovery within {args.node_timeout + 5:g} s")
    print(f"{'scenario':22} {'trials':>6} {'passed':>6} {'lost':>5} {'double':>6} {'books':>8} "
          f"{'rec min':>6} {'median':>6} {'max':>6}")
    tallies = run(names, args.trials, args.worker_kills, args.node_timeout)
    failed = [t.name for t in tallies if not all(x.passed for x in t.trials)]
    print("every trial passed" if not failed else f"failed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
