"""`peergrid worker`: the provider's agent.

The worker's modules are imported inside the command, and nothing of the server's: a provider's
machine runs it without Flask, SQLAlchemy, Alembic or psycopg.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import click

from cli import fail, main, setup_logging


@main.command()
@click.option("--server", envvar="PEERGRID_SERVER", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PEERGRID_NODE_TOKEN",
              help="The node token from `peergrid node create`; better passed as PEERGRID_NODE_TOKEN, since every "
                   "user of the machine can read a command line.")
@click.option("--join-token", envvar="PEERGRID_JOIN_TOKEN",
              help="A join token from `peergrid node join-token`: without a node token, the worker joins as a new "
                   "node and keeps its node token in its data dir (node-token). Better passed as PEERGRID_JOIN_TOKEN.")
@click.option("--name", envvar="PEERGRID_NODE_NAME",
              help="The node's name when it joins [default: the machine's hostname]; with a node token, a label for "
                   "logs (the node keeps the name it was created with).")
@click.option("--simulate-gpus", envvar="PEERGRID_SIMULATE_GPUS", metavar="SPEC",
              help="Made-up GPUs for development and tests; shown as simulated.")
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1, 256), help="CPU ops run at once.")
@click.option("--job-network", envvar="PEERGRID_JOB_NETWORK", default="bridge", show_default=True,
              help='Network for job containers: "none" (no outbound network) or a Docker network name; never "host".')
@click.option("--job-memory-mb", type=click.IntRange(64), envvar="PEERGRID_JOB_MEMORY_MB",
              help="Memory limit per container [default: its op's share of the machine].")
@click.option("--job-cpus", type=click.FloatRange(0.1), envvar="PEERGRID_JOB_CPUS",
              help="CPU limit per container [default: its op's share of the machine].")
@click.option("--events/--no-events", envvar="PEERGRID_WORKER_EVENTS", default=True, show_default=True,
              help="Send Celery worker events so Flower lists this node (needs publish rights on the broker).")
@click.option("--data-dir", envvar="PEERGRID_WORKER_DATA_DIR", type=click.Path(file_okay=False),
              help="Where the worker keeps its state [default: ~/.local/state/peergrid-worker].")
@click.option("--docker-host", envvar="PEERGRID_DOCKER_HOST", metavar="URL",
              help="The Docker engine for job containers [default: DOCKER_HOST, else the local socket].")
@click.option("--drain-timeout", envvar="PEERGRID_DRAIN_TIMEOUT", type=click.FloatRange(0), default=300, show_default=True,
              help="Seconds a first Ctrl-C lets running ops go on before they are given back.")
@click.option("--health-file", envvar="PEERGRID_HEALTH_FILE", type=click.Path(dir_okay=False),
              help="Where to write when its loops (heartbeat, offers) last went round, for `peergrid health`.")
def worker(server: str, token: str | None, join_token: str | None, name: str | None, simulate_gpus: str | None,
           slots: int, job_network: str, job_memory_mb: int | None, job_cpus: float | None, events: bool,
           data_dir: str | None, docker_host: str | None, drain_timeout: float, health_file: str | None) -> None:
    """Run the provider's agent: take offers and run them in Docker.

    Its node token is, in order: --token; the one an earlier join saved in its data dir; or, with
    --join-token, a new node's, got by joining once (give each worker its own --name).

    A first Ctrl-C drains it: it takes nothing new, lets what runs finish (up to --drain-timeout
    seconds) and exits. A second Ctrl-C, or SIGTERM, gives what still runs back to the server now,
    to be offered again at once: not billed, and not counted as one of the op's tries.
    """
    from worker.agent import Agent
    from worker.errors import WorkerError
    from worker.settings import WorkerSettings

    setup_logging()
    try:
        settings = WorkerSettings.from_env(
            server=server, token=token, join_token=join_token, name=name, simulate_gpus=simulate_gpus, slots=slots,
            job_network=job_network, memory_limit_mb=job_memory_mb, cpu_limit=job_cpus, events=events,
            data_dir=Path(data_dir) if data_dir else None, docker_host=docker_host, drain_timeout_s=drain_timeout,
            health_file=Path(health_file) if health_file else None,
        )
        agent = Agent(settings)
    except WorkerError as e:
        fail(str(e))

    say = logging.getLogger("worker").info

    def _interrupt(_signum, _frame):
        if agent.leaving:
            say("Ctrl-C again: giving back what runs, to be offered again")
            agent.stop()
            return
        say("draining: taking nothing new; %d running op(s) may finish within %g s. Ctrl-C again gives them back now",
            agent.running_count(), settings.drain_timeout_s)
        agent.drain(settings.drain_timeout_s)

    def _terminate(_signum, _frame):
        say("stopping (SIGTERM): giving back what runs, to be offered again")
        agent.stop()

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        agent.run()
    except WorkerError as e:
        fail(str(e))
