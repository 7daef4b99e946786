"""Start-up: how long client commands take, against a bare interpreter start.

    .venv/bin/python -m bench.cli [--runs 30]

Each run is a fresh process, timed by the wall clock from start to exit: `peergrid job validate` on a
hello-world definition, `peergrid --help` and `peergrid worker --help`, against `python -c pass`
(the interpreter and site start alone) measured in the same run. One uncounted run of each comes
first, so the figures are of a machine that has run the command before. Needs no services.
Prints median and p95 for each, and the ratio of the medians to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import print_timings
from tests import factories

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)  # warm-up, not counted
    out = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        out.append(time.monotonic() - began)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        definition = Path(root) / "hello.json"
        definition.write_text(json.dumps(factories.hello_world("ubuntu")))
        peergrid = [sys.executable, "-m", "cli"]
        rows = [
            ("python -c pass (baseline)", timed([sys.executable, "-c", "pass"], args.runs)),
            ("peergrid job validate", timed([*peergrid, "job", "validate", str(definition)], args.runs)),
            ("peergrid --help", timed([*peergrid, "--help"], args.runs)),
            ("peergrid worker --help", timed([*peergrid, "worker", "--help"], args.runs)),
        ]

    print_timings(f"start-up, {args.runs} runs each, wall clock of a fresh process", rows)


if __name__ == "__main__":
    main()
