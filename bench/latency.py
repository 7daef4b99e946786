"""Latency: submit → succeeded for a one-op job, against a bare `docker run --rm` of the same image.

    .venv/bin/python -m bench.latency [--runs 20] [--setup embedded|scaled|both]

Needs what scripts/test sets up (Docker and the test image; Redis and PostgreSQL for `scaled`).
Prints median and p95 for each, and the ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import print_timings, store_and_broker
from tests import factories
from tests.stack import Api, Stack

IMAGE = os.environ.get("PEERGRID_TEST_IMAGE", "peergrid-test/busybox:latest")


def bare_docker(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(["docker", "run", "--rm", "--network", "none", IMAGE, "echo", "hello", "world"],
                       check=True, capture_output=True)
        out.append(time.monotonic() - began)
    return out


def through_peergrid(setup: str, runs: int, root: Path) -> list[float]:
    with store_and_broker(setup, root) as (database_url, broker_url), \
            Stack(root, database_url=database_url, broker_url=broker_url) as stack:
        stack.start_web()
        stack.start_scheduler()
        _, node_token, _ = factories.node(stack.core, name="bench")
        stack.start_worker(node_token)
        _, token = factories.user(stack.core)
        api = Api(stack.url, token)
        api.wait(api.post("/jobs", factories.hello_world(IMAGE)).json()["id"])  # warm-up, not counted
        out = []
        for _ in range(runs):
            began = time.monotonic()
            job = api.wait(api.post("/jobs", factories.hello_world(IMAGE)).json()["id"])
            out.append(time.monotonic() - began)
            assert job["state"] == "succeeded", stack.logs()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--setup", choices=["embedded", "scaled", "both"], default="both")
    args = parser.parse_args()
    setups = ["embedded", "scaled"] if args.setup == "both" else [args.setup]

    baseline = bare_docker(args.runs)
    rows = [("bare docker run --rm", baseline)]
    for setup in setups:
        with tempfile.TemporaryDirectory() as root:
            rows.append((f"peergrid {setup}", through_peergrid(setup, args.runs, Path(root))))

    print_timings(f"latency, {args.runs} runs each, one-op hello-world job, image {IMAGE}", rows)


if __name__ == "__main__":
    main()
