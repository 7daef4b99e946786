"""Typed settings of the server processes, read once from PEERGRID_* variables at start-up."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from scheduler.credits import parse_credits
from scheduler.errors import ConfigurationError, PeergridError
from scheduler.priorities import DEFAULT_MAX_PRIORITY, DEFAULT_MIN_PRIORITY, PriorityBounds


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {raw!r}.") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}.") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {raw!r}.")


def _credits(env: Mapping[str, str], name: str, default: int) -> int:
    """A setting written in credits ("2.5"), as micro-credits, exactly."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse_credits(raw)
    except PeergridError as e:
        raise ConfigurationError(f"{name} must be an amount of credits, like 100 or 2.5, not {raw!r}: {e}") from None
    if value < 0:
        raise ConfigurationError(f"{name} cannot be negative.")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a web, scheduler or `up` process needs to know about its surroundings."""

    data_dir: Path
    database_url: str
    broker_url: str
    # The broker address handed to workers when they register; differs from broker_url when the
    # server reaches the broker by an internal name.
    worker_broker_url: str
    secret_key: str = field(repr=False)
    # How long a placed offer may sit unclaimed before it is withdrawn and placed again.
    reoffer_after_s: float = 5.0
    # Fair share: what an account used a half-life ago counts half as much (scheduler.ordering).
    fair_share_half_life_s: float = 86_400.0
    heartbeat_interval_s: float = 10.0
    # A node silent this long is offline, and what it ran is offered again elsewhere.
    node_timeout_s: float = 30.0
    # Default and ceiling for an op's run time when neither the op nor its market says.
    default_timeout_s: int = 3600
    # How long past an op's time limit the scheduler waits for its node before failing the attempt.
    timeout_grace_s: float = 60.0
    max_log_line_chars: int = 16_384
    max_log_batch_lines: int = 5_000
    # What an attempt's stored log may hold, in bytes of UTF-8; past it, lines are discarded.
    max_log_bytes_per_attempt: int = 16 * 1024 * 1024
    # Largest request body the API accepts.
    max_body_bytes: int = 4 * 1024 * 1024
    # The most ops one job may have: what a single submit may ask the server to plan and watch.
    max_ops_per_job: int = 1000
    # The most jobs one array may have (the size of 0-999: 1,000), and the most ops its jobs may have
    # in all: what one array submit may ask the server to store at once.
    max_array_size: int = 10_000
    max_array_ops: int = 100_000
    # Largest output archive an op may upload.
    max_artifact_bytes: int = 1024 * 1024 * 1024
    # Micro-credits every new account is granted; on in the embedded set-up, so the quick start runs.
    starter_credits: int = 0
    # The smallest payout a provider may ask for, in micro-credits.
    min_payout: int = 1_000_000
    # Whether anyone may sign up on the dashboard (otherwise admins create accounts).
    allow_signup: bool = True
    # Bearer token Prometheus sends to /metrics; without one, only loopback clients may scrape.
    metrics_token: str | None = field(default=None, repr=False)
    # Where the process writes when its loops last went round, for `peergrid health`; None: nowhere.
    health_file: Path | None = None
    # The gateway's HTTP port (endpoints are served there) and its SSH port (workers tunnel there).
    gateway_port: int = 8080
    gateway_ssh_port: int = 2222
    # The address a gateway binds both on, and the host:port it tells workers to dial for SSH.
    gateway_host: str = "127.0.0.1"
    gateway_ssh_address: str = "127.0.0.1:2222"
    # A gateway's name in the store; unique per gateway process.
    gateway_name: str = "gateway"
    # How long a gateway's lease in the store runs; it renews it several times within. A gateway
    # killed without stopping is no longer handed to workers, nor counts as forwarding, once it runs out.
    gateway_lease_s: float = 15.0
    # Endpoint URLs are http://<label>.<endpoint_domain>/; by default localhost:<gateway_port>,
    # which browsers resolve to loopback.
    endpoint_domain: str = "localhost:8080"
    # Whether every endpoint is private, whatever its op says (an admin's choice for the cluster).
    private_endpoints: bool = False
    # The dashboard's address, for the gateway's sign-in page of a private endpoint; None: no link.
    dashboard_url: str | None = None
    # The highest job priority a person may ask for unless an admin set their own cap (admins may ask
    # any), and the lowest anyone may (a nice job, below everyone's default of 0).
    max_priority: int = DEFAULT_MAX_PRIORITY
    min_priority: int = DEFAULT_MIN_PRIORITY

    @property
    def embedded(self) -> bool:
        """Whether the store and broker are the embedded SQLite ones."""
        return self.database_url.startswith("sqlite") and self.broker_url.startswith("sqla+sqlite")

    @property
    def priority_bounds(self) -> PriorityBounds:
        return PriorityBounds(default_cap=self.max_priority, floor=self.min_priority)

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read the settings from the environment (or the mapping given), with embedded defaults."""
        env = os.environ if env is None else env
        data_dir = Path(overrides.pop("data_dir", None) or env.get("PEERGRID_DATA_DIR") or "var").resolve()
        database_url = env.get("PEERGRID_DATABASE_URL") or f"sqlite:///{data_dir / 'peergrid.sqlite'}"
        broker_url = env.get("PEERGRID_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.sqlite'}"
        values = dict(
            data_dir=data_dir,
            database_url=database_url,
            broker_url=broker_url,
            worker_broker_url=env.get("PEERGRID_WORKER_BROKER_URL") or broker_url,
            secret_key=env.get("PEERGRID_SECRET_KEY") or "",
            reoffer_after_s=_float(env, "PEERGRID_REOFFER_AFTER", 5.0),
            fair_share_half_life_s=_float(env, "PEERGRID_FAIR_SHARE_HALF_LIFE", 86_400.0),
            heartbeat_interval_s=_float(env, "PEERGRID_HEARTBEAT_INTERVAL", 10.0),
            node_timeout_s=_float(env, "PEERGRID_NODE_TIMEOUT", 30.0),
            default_timeout_s=_int(env, "PEERGRID_DEFAULT_TIMEOUT", 3600),
            timeout_grace_s=_float(env, "PEERGRID_TIMEOUT_GRACE", 60.0),
            max_body_bytes=_int(env, "PEERGRID_MAX_BODY_BYTES", 4 * 1024 * 1024),
            max_ops_per_job=_int(env, "PEERGRID_MAX_OPS_PER_JOB", 1000),
            max_array_size=_int(env, "PEERGRID_MAX_ARRAY_SIZE", 10_000),
            max_array_ops=_int(env, "PEERGRID_MAX_ARRAY_OPS", 100_000),
            max_artifact_bytes=_int(env, "PEERGRID_MAX_ARTIFACT_BYTES", 1024 * 1024 * 1024),
            max_log_bytes_per_attempt=_int(env, "PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT", 16 * 1024 * 1024),
            min_payout=_credits(env, "PEERGRID_MIN_PAYOUT", 1_000_000),
            allow_signup=env.get("PEERGRID_ALLOW_SIGNUP", "true").strip().lower() not in ("0", "false", "no", "off"),
            metrics_token=env.get("PEERGRID_METRICS_TOKEN") or None,
            health_file=Path(env["PEERGRID_HEALTH_FILE"]) if env.get("PEERGRID_HEALTH_FILE") else None,
            gateway_port=_int(env, "PEERGRID_GATEWAY_PORT", 8080),
            gateway_ssh_port=_int(env, "PEERGRID_GATEWAY_SSH_PORT", 2222),
            gateway_host=env.get("PEERGRID_GATEWAY_HOST") or "127.0.0.1",
            gateway_name=env.get("PEERGRID_GATEWAY_NAME") or "gateway",
            gateway_lease_s=_float(env, "PEERGRID_GATEWAY_LEASE", 15.0),
            private_endpoints=_bool(env, "PEERGRID_PRIVATE_ENDPOINTS", False),
            dashboard_url=(env.get("PEERGRID_DASHBOARD_URL") or "").rstrip("/") or None,
            max_priority=_int(env, "PEERGRID_MAX_PRIORITY", DEFAULT_MAX_PRIORITY),
            min_priority=_int(env, "PEERGRID_MIN_PRIORITY", DEFAULT_MIN_PRIORITY),
        )
        values["gateway_ssh_address"] = (
            env.get("PEERGRID_GATEWAY_SSH_ADDRESS") or f"127.0.0.1:{values['gateway_ssh_port']}"
        )
        values["endpoint_domain"] = env.get("PEERGRID_ENDPOINT_DOMAIN") or f"localhost:{values['gateway_port']}"
        embedded = database_url.startswith("sqlite") and broker_url.startswith("sqla+sqlite")
        values["starter_credits"] = _credits(env, "PEERGRID_STARTER_CREDITS", 100_000_000 if embedded else 0)
        values.update(overrides)
        if values["max_log_bytes_per_attempt"] < 1:
            raise ConfigurationError("PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT must be 1 or more.")
        if values["max_ops_per_job"] < 1:
            raise ConfigurationError("PEERGRID_MAX_OPS_PER_JOB must be 1 or more.")
        if not values["min_priority"] <= 0 <= values["max_priority"]:
            raise ConfigurationError(
                "PEERGRID_MIN_PRIORITY must be 0 or less and PEERGRID_MAX_PRIORITY 0 or more: 0 is every job's default."
            )
        if values["max_array_size"] < 1 or values["max_array_ops"] < 1:
            raise ConfigurationError("PEERGRID_MAX_ARRAY_SIZE and PEERGRID_MAX_ARRAY_OPS must be 1 or more.")
        settings = cls(**values)
        if not settings.secret_key:
            settings = replace(settings, secret_key=_local_secret(settings.data_dir))
        return settings


def _local_secret(data_dir: Path) -> str:
    """Return the secret kept in the data dir, making one on first use."""
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this data dir made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
