"""Typed settings of the worker agent, from its command line and PEERGRID_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from worker.errors import WorkerError


@dataclass(frozen=True)
class WorkerSettings:
    server: str
    # The node token; empty when the worker joins with join_token (or joined before: worker.joining).
    token: str = field(default="", repr=False)
    # A join token: with no node token given or saved, the worker joins with it as a new node.
    join_token: str | None = field(default=None, repr=False)
    # The node's name when it joins (default: the machine's hostname); else a label for logs.
    name: str | None = None
    simulate_gpus: str | None = None
    # CPU ops run at once.
    slots: int = 1
    # Network for job containers: "none" (no network) or a Docker network name such as "bridge".
    job_network: str = "bridge"
    # How the worker reaches its job containers' ports (worker.reach): "loopback", where the engine
    # publishes them (a worker on the engine's host), or "network", by name on a Docker network it
    # shares with them (a worker in a container, as compose.yaml runs it).
    job_reach: str = "loopback"
    # In network mode, the worker's own container (name or id); None: its hostname, which Docker
    # sets to the container's id unless told otherwise.
    worker_container: str | None = None
    # Seconds between log batches sent while a container runs.
    log_interval_s: float = 0.25
    # Seconds between broker polls on transports that poll (the embedded SQL broker).
    poll_interval_s: float = 0.1
    # Docker engine address (PEERGRID_DOCKER_HOST, else DOCKER_HOST); None means the local socket.
    docker_host: str | None = None
    # Seconds a container gets to stop after SIGTERM before it is killed.
    stop_grace_s: int = 5
    # Seconds a first Ctrl-C lets running attempts go on before they are given back.
    drain_timeout_s: float = 300.0
    # Per-container limits: processes, memory (MB; None = no limit) and CPUs (None = no limit).
    pids_limit: int = 4096
    memory_limit_mb: int | None = None
    cpu_limit: float | None = None
    # Send Celery's worker events on the broker, so Flower lists the node; needs publish rights there.
    events: bool = True
    # Where the worker keeps what must outlive it (the images it pulled with someone's registry login);
    # None keeps it in memory only.
    data_dir: Path | None = None
    # Where the agent writes when its loops last went round, for `peergrid health`; None: nowhere.
    health_file: Path | None = None
    # Seconds between a service's continuous health checks (PEERGRID_HEALTH_INTERVAL), and how many
    # failures in a row restart its container, as its restart_policy allows (PEERGRID_HEALTH_FAILURES).
    health_interval_s: float = 10.0
    health_failures: int = 3

    def __post_init__(self) -> None:
        if self.health_interval_s <= 0 or self.health_failures < 1:
            raise WorkerError("PEERGRID_HEALTH_INTERVAL must be more than 0 seconds and PEERGRID_HEALTH_FAILURES 1 or more.")
        if self.job_network in ("host",) or self.job_network.startswith("container:"):
            raise WorkerError(
                f"--job-network {self.job_network} would give jobs the host's (or another container's) network; "
                'use "none", "bridge" or a network of your own.'
            )
        if self.job_reach not in ("loopback", "network"):
            raise WorkerError(f"PEERGRID_JOB_REACH is {self.job_reach!r}; use \"loopback\" (a worker on the Docker "
                              'engine\'s host) or "network" (a worker in a container).')

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given) -> "WorkerSettings":
        env = os.environ if env is None else env
        values = {
            "server": env.get("PEERGRID_SERVER", "http://127.0.0.1:8000"),
            "token": env.get("PEERGRID_NODE_TOKEN", ""),
            "join_token": env.get("PEERGRID_JOIN_TOKEN") or None,
            "name": env.get("PEERGRID_NODE_NAME") or None,
            "job_network": env.get("PEERGRID_JOB_NETWORK", "bridge"),
            "job_reach": env.get("PEERGRID_JOB_REACH") or "loopback",
            "worker_container": env.get("PEERGRID_WORKER_CONTAINER") or None,
            "docker_host": env.get("PEERGRID_DOCKER_HOST") or env.get("DOCKER_HOST") or None,
            "events": env.get("PEERGRID_WORKER_EVENTS", "true").strip().lower() not in {"0", "false", "no", "off"},
            "data_dir": Path(env.get("PEERGRID_WORKER_DATA_DIR") or _state_home(env) / "peergrid-worker"),
            "health_file": Path(env["PEERGRID_HEALTH_FILE"]) if env.get("PEERGRID_HEALTH_FILE") else None,
        }
        if env.get("PEERGRID_JOB_MEMORY_MB"):
            values["memory_limit_mb"] = int(env["PEERGRID_JOB_MEMORY_MB"])
        if env.get("PEERGRID_JOB_CPUS"):
            values["cpu_limit"] = float(env["PEERGRID_JOB_CPUS"])
        if env.get("PEERGRID_HEALTH_INTERVAL"):
            values["health_interval_s"] = float(env["PEERGRID_HEALTH_INTERVAL"])
        if env.get("PEERGRID_HEALTH_FAILURES"):
            values["health_failures"] = int(env["PEERGRID_HEALTH_FAILURES"])
        if env.get("PEERGRID_DRAIN_TIMEOUT"):
            values["drain_timeout_s"] = float(env["PEERGRID_DRAIN_TIMEOUT"])
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)


def _state_home(env: Mapping[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
