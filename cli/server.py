"""Commands that run the server's processes or act on its store: up, db, web, scheduler, gateway, admin.

The server's code and libraries are imported inside the commands that use them, so that
`peergrid --help` and the commands of other modules start without them.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from cli import fail, main, setup_logging
from protocol.gpus import gb_text, mb_from_gb


def _core():
    from scheduler.core import Core
    from scheduler.errors import PeergridError
    from scheduler.settings import Settings

    try:
        return Core.from_settings(Settings.from_env())
    except PeergridError as e:
        fail(str(e))


@contextmanager
def _transaction(core=None):
    """One transaction on the store for a command; a refusal becomes the command's error."""
    from scheduler.errors import PeergridError

    core = core or _core()
    try:
        with core.transaction() as session:
            yield session
    except PeergridError as e:
        fail(str(e))


_health_file = click.option(
    "--health-file", type=click.Path(dir_okay=False, path_type=Path),
    help="The health file, where it writes when its loops last went round [default: PEERGRID_HEALTH_FILE].",
)


def _settings(health_file: Path | None):
    from scheduler.settings import Settings

    return Settings.from_env(**({"health_file": health_file} if health_file else {}))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the embedded store and broker live [./var].")
@click.option("--simulate-gpus", metavar="SPEC", help='Give the local worker made-up GPUs, e.g. "NVIDIA GeForce RTX 4090:24x2".')
@click.option("--no-worker", is_flag=True, help="Do not start a local worker.")
def up(host: str, port: int, data_dir: str | None, simulate_gpus: str | None, no_worker: bool) -> None:
    """Run web, scheduler, gateway and a local worker together on this machine."""
    from cli.up import run_up

    sys.exit(run_up(host=host, port=port, data_dir=data_dir, simulate_gpus=simulate_gpus, worker=not no_worker))


@main.group()
def db() -> None:
    """The job store."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to PEERGRID_DATABASE_URL."""
    from scheduler.errors import PeergridError
    from scheduler.migrate import upgrade
    from scheduler.settings import Settings

    settings = Settings.from_env()
    try:
        upgrade(settings.database_url)
    except PeergridError as e:
        fail(str(e))
    click.echo(f"The store at {_redact(settings.database_url)} is up to date.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
@_health_file
def web(host: str, port: int, threads: int, health_file: Path | None) -> None:
    """Serve the web app and APIs. Its health file names loop `hearing`."""
    import waitress

    from web import create_app, start_hearing

    from scheduler.errors import PeergridError

    setup_logging()
    try:
        app = create_app(_settings(health_file))
    except PeergridError as e:
        fail(str(e))
    start_hearing(app)
    click.echo(f"Serving on http://{host}:{port}/", err=True)
    waitress.serve(app, host=host, port=port, threads=threads, ident="peergrid", clear_untrusted_proxy_headers=True)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@_health_file
def scheduler(loglevel: str, health_file: Path | None) -> None:
    """Run the trusted scheduler service: a Celery worker whose upkeep (re-offers, the node reaper,
    time limits) runs in the scheduler holding the store's upkeep lease; others stand by.

    Its health file names loops `upkeep` and `consumer`."""
    from scheduler.celery_app import SCHEDULER_QUEUE, make_celery

    app = make_celery(_settings(health_file))
    app.worker_main(
        ["worker", "-Q", SCHEDULER_QUEUE, "--pool", "solo", "--loglevel", loglevel, "--without-mingle", "--without-gossip"]
    )


@main.command()
@click.option("--host", help="Address to bind both servers on [default: PEERGRID_GATEWAY_HOST, else 127.0.0.1].")
@click.option("--port", type=int, help="HTTP port endpoints are served on [default: PEERGRID_GATEWAY_PORT, else 8080].")
@click.option("--ssh-port", type=int, help="SSH port workers tunnel to [default: PEERGRID_GATEWAY_SSH_PORT, else 2222].")
def gateway(host: str | None, port: int | None, ssh_port: int | None) -> None:
    """Serve endpoints: take workers' SSH tunnels and serve each endpoint's URL through its tunnel."""
    import os

    from gateway.service import run_gateway
    from scheduler.errors import PeergridError
    from scheduler.settings import Settings

    setup_logging()
    # The options stand for their variables, so that what derives from them (the SSH address
    # workers dial, the endpoint domain) follows too.
    given = {"PEERGRID_GATEWAY_HOST": host, "PEERGRID_GATEWAY_PORT": port, "PEERGRID_GATEWAY_SSH_PORT": ssh_port}
    try:
        settings = Settings.from_env({**os.environ, **{k: str(v) for k, v in given.items() if v is not None}})
    except PeergridError as e:
        fail(str(e))
    run_gateway(settings)


# -- admin ---------------------------------------------------------------------------------


@main.group()
def admin() -> None:
    """Accounts and tokens (run on the server, against its store)."""


@admin.command("create-user")
@click.argument("email")
@click.option("--admin", "is_admin", is_flag=True, help="Make the account an admin.")
@click.option("--password", help="Read from stdin when piped, else asked for, when omitted.")
def create_user_cmd(email: str, is_admin: bool, password: str | None) -> None:
    """Create an account; its password is read from stdin when piped (its first line), else asked for."""
    from scheduler.accounts import create_user

    if password is None and sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    elif password is None:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    core = _core()
    with _transaction(core) as session:
        user = create_user(session, email, password, is_admin=is_admin, starter_credits=core.settings.starter_credits)
    click.echo(f"Created {'admin ' if is_admin else ''}account {user.email} (id {user.id}).")


@admin.command("create-token")
@click.argument("email")
@click.option("--name", default="cli", show_default=True)
def create_token_cmd(email: str, name: str) -> None:
    """Print a new API token for an account, and nothing else."""
    from scheduler.accounts import create_api_token, find_user

    with _transaction() as session:
        user = find_user(session, email)
        if user is None:
            fail(f"There is no account {email}; create it with `peergrid admin create-user {email}`.")
        token = create_api_token(session, user, name)
    click.echo(token)


@admin.command("grant")
@click.argument("email")
@click.argument("amount")
@click.option("--memo", default="", help="Why, for the ledger.")
def grant_cmd(email: str, amount: str, memo: str) -> None:
    """Credit an account from issuance (AMOUNT in credits, e.g. 25 or 2.5)."""
    from scheduler import ledger
    from scheduler.accounts import find_user
    from scheduler.errors import PeergridError

    try:
        micro = ledger.parse_credits(amount)
    except PeergridError as e:
        fail(str(e))
    with _transaction() as session:
        user = find_user(session, email)
        if user is None:
            fail(f"There is no account {email}; create it with `peergrid admin create-user {email}`.")
        ledger.grant(session, user, micro, memo=memo or "Granted from the command line.")
        available = ledger.balances(session, user.id)["available"]
    click.echo(f"Granted {ledger.credits(micro)} credits to {email}; available now {ledger.credits(available)}.")


@admin.command("check-books")
def check_books_cmd() -> None:
    """Exit 0 and print the totals when the ledger balances; exit 1 and say where it does not."""
    from scheduler import ledger

    with _transaction() as session:
        books = ledger.check_books(session)
    for name, value in books.totals.items():
        click.echo(f"{name:<16} {ledger.credits(value):>20} credits")
    if books.balanced:
        click.echo("The books balance.")
        return
    for problem in books.problems:
        click.echo(f"UNBALANCED: {problem}", err=True)
    sys.exit(1)


def _limit_option(value: str | None, flag: str) -> int | None | str:
    """A limit as typed: a whole number, "none" to lift it, or "keep" when the flag was not given."""
    if value is None:
        return "keep"
    if value.strip().lower() in ("none", "off", "-"):
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"{flag} takes a whole number, or none to lift that limit; not {value!r}.")


@admin.command("quota")
@click.argument("email")
@click.option("--market", "slug", metavar="SLUG", help="On this market only [default: on every market together].")
@click.option("--running-gpus", metavar="N", help="The most GPUs their ops hold at once (none: no limit).")
@click.option("--waiting-jobs", metavar="N", help="The most of their jobs waiting at once (none: no limit).")
@click.option("--clear", is_flag=True, help="Remove the quota (on --market, or the every-market one).")
def quota_cmd(email: str, slug: str | None, running_gpus: str | None, waiting_jobs: str | None, clear: bool) -> None:
    """Set, clear or show a person's quotas (EMAIL or id); with no limit given, show them.

    A limit not given keeps its value; none lifts it.
    """
    from scheduler.accounts import user_named
    from scheduler.priorities import priority_cap
    from scheduler.quotas import clear_quota, list_quotas, market_named, quota_of, set_quota

    running, waiting = _limit_option(running_gpus, "--running-gpus"), _limit_option(waiting_jobs, "--waiting-jobs")
    if clear and (running != "keep" or waiting != "keep"):
        fail("--clear removes the quota; give it without --running-gpus or --waiting-jobs.")
    core = _core()
    where = f"on {slug}" if slug else "on every market"
    with _transaction(core) as session:
        user = user_named(session, email)
        market = market_named(session, slug)
        if clear:
            said = f"Removed {user.email}'s quota {where}." if clear_quota(session, user, market) else \
                f"{user.email} had no quota {where}."
        elif running != "keep" or waiting != "keep":
            now = quota_of(session, user, market)
            if running == "keep":
                running = now.max_running_gpus if now else None
            if waiting == "keep":
                waiting = now.max_waiting_jobs if now else None
            kept = set_quota(session, user, market, max_running_gpus=running, max_waiting_jobs=waiting)
            said = f"Set {user.email}'s quota {where}." if kept else f"{user.email} has no quota {where} now."
        else:
            said = None
        quotas = list_quotas(session, user)
        cap = priority_cap(user, core.settings.priority_bounds)
    if said:
        click.echo(said)
    click.echo(f"{user.email}: priority cap {cap}{'' if user.max_priority is not None else ' (the default)'}")
    if not quotas:
        click.echo("  no quotas")
    for q in quotas:
        gpus = "no limit" if q.max_running_gpus is None else q.max_running_gpus
        jobs = "no limit" if q.max_waiting_jobs is None else q.max_waiting_jobs
        click.echo(f"  {q.market or 'every market'}: running GPUs {gpus}, waiting jobs {jobs}")


@admin.command("max-priority")
@click.argument("email")
@click.argument("cap")
def max_priority_cmd(email: str, cap: str) -> None:
    """Set the highest job priority a person (EMAIL or id) may ask for; CAP "default" gives the cluster's."""
    from scheduler.accounts import user_named
    from scheduler.priorities import set_max_priority

    if cap.strip().lower() in ("default", "none"):
        value = None
    else:
        try:
            value = int(cap)
        except ValueError:
            fail(f"CAP is a whole number, or default for the cluster's (PEERGRID_MAX_PRIORITY); not {cap!r}.")
    core = _core()
    with _transaction(core) as session:
        user = user_named(session, email)
        set_max_priority(session, user, value)
    if value is None:
        click.echo(f"{user.email} may ask for priorities up to the cluster's default, {core.settings.max_priority}.")
    else:
        click.echo(f"{user.email} may ask for priorities up to {value}.")


@admin.group("market")
def market() -> None:
    """Markets: which hardware an op gets, and its price."""


def _market_fields(gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout, name) -> dict:
    fields = {
        "name": name,
        "gpu_count": gpus,
        "min_vram_mb": None if min_vram_gb is None else mb_from_gb(min_vram_gb),
        "gpu_models": None if models is None else [m.strip() for m in models.split(",") if m.strip()],
        "min_compute_capability": min_compute,
        "min_cuda_version": min_cuda,
        "price_per_second": price,
        "fee_ppm": None if fee_percent is None else round(fee_percent * 10_000),
        "max_timeout_s": max_timeout,
    }
    return {k: v for k, v in fields.items() if v is not None}


_market_options = [
    click.option("--name", help="What people see."),
    click.option("--gpus", type=click.IntRange(0, 64), help="GPUs each op holds (0 for a CPU market)."),
    click.option("--min-vram-gb", type=click.FloatRange(0), help="Memory each GPU must have, in GB."),
    click.option("--models", help="Allowed GPU model names, comma-separated (any when omitted)."),
    click.option("--min-compute", help="Lowest compute capability, e.g. 8.0."),
    click.option("--min-cuda", help="Lowest CUDA version the driver must support, e.g. 12.2."),
    click.option("--price", type=click.IntRange(0), help="Micro-credits per GPU-second (per core-second for CPU)."),
    click.option("--fee-percent", type=click.FloatRange(0, 100), help="The platform's share of each charge."),
    click.option("--max-timeout", type=click.IntRange(1), help="The longest an op may run, in seconds."),
]


def _with_market_options(command):
    for option in reversed(_market_options):
        command = option(command)
    return command


@market.command("create")
@click.argument("slug")
@_with_market_options
def market_create(slug, name, gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout) -> None:
    """Define a market (its queue is market.SLUG)."""
    from scheduler.markets import create_market

    fields = _market_fields(gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout, name)
    with _transaction() as session:
        created = create_market(session, slug, **fields)
    click.echo(f"Created market {created.slug} (queue {created.queue}).")


@market.command("update")
@click.argument("slug")
@_with_market_options
def market_update(slug, name, gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout) -> None:
    """Change a market's requirements or price."""
    from scheduler.markets import update_market

    fields = _market_fields(gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout, name)
    with _transaction() as session:
        update_market(session, slug, **fields)
    click.echo(f"Updated market {slug}.")


@market.command("list")
def market_list() -> None:
    """Every market with its requirements and price."""
    from sqlalchemy import select

    from scheduler.models import Market

    with _transaction() as session:
        rows = list(session.scalars(select(Market).order_by(Market.gpu_count, Market.price_per_second)))
        for m in rows:
            need = "CPU" if m.gpu_count == 0 else f"{m.gpu_count} GPU ≥ {gb_text(m.min_vram_mb)} GB"
            if m.gpu_models:
                need += f" ({', '.join(m.gpu_models)})"
            click.echo(f"{m.slug:<14} {need:<34} {m.price_per_second:>6} µcr/s  fee {m.fee_ppm / 10_000:g}%  max {m.max_timeout_s} s")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
