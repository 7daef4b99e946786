"""Every benchmark stays runnable with its one command: each runs here at a tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.usefixtures("postgres_admin", "redis_url")
def test_dispatch_runs_on_both_set_ups():
    out = bench("bench.dispatch", "--ops", "4")
    assert "× celery" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["embedded", "scaled"]


@pytest.mark.usefixtures("postgres_admin", "redis_url")
def test_scale_runs_and_counts_statements():
    out = bench("bench.scale", "--nodes", "20", "--jobs", "200", "--requests", "2")
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.startswith(("heartbeat ", "submit "))}
    assert set(rows) == {"heartbeat", "submit (API)"}
    assert "heartbeats:" in out


@pytest.mark.usefixtures("docker_client", "test_image")
def test_latency_runs_against_bare_docker():
    out = bench("bench.latency", "--runs", "2", "--setup", "embedded")
    assert "bare docker run --rm" in out and "peergrid embedded" in out


def test_packing_runs():
    out = bench("bench.packing", "--ops", "3")
    assert "ideal" in out and "peergrid" in out


def test_cli_start_up_runs_against_a_bare_interpreter():
    out = bench("bench.cli", "--runs", "2")
    assert "python -c pass (baseline)" in out and "peergrid job validate" in out and "peergrid --help" in out


@pytest.mark.usefixtures("docker_client", "test_image")
def test_the_fault_campaign_runs_every_scenario_and_each_trial_passes():
    out = bench("bench.faults", "--trials", "1", "--worker-kills", "1")
    from bench.faults import SCENARIOS

    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in SCENARIOS}
    assert set(rows) == set(SCENARIOS)
    assert all(row[1] == row[2] == "1" for row in rows.values()), out  # trials, passed
    assert "every trial passed" in out


def test_planning_runs_against_its_baseline():
    out = bench("bench.planning", "--ops", "20", "--shapes", "sequence,group,chain")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        (shape, n) for shape in ("sequence", "group", "chain") for n in ("100", "20")
    ], out
    assert "per op × base" in out and not any("failed" in line for line in out.splitlines())


@pytest.mark.usefixtures("docker_client", "test_image")
def test_endpoints_runs_through_the_gateway_against_direct():
    out = bench("bench.endpoints", "--seconds", "0.2", "--clients", "1,2", "--chunks", "3", "--spacing-ms", "10",
                "--work-us", "100")
    assert out.count("× the direct request rate") == 6, out
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("direct ", "gateway "))] == \
        ["direct", "gateway"] * 7, out  # 3 services × 2 client counts, and the stream
    assert "buffered: " in out
