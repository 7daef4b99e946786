"""The `peergrid` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import click

from scheduler.errors import InvalidDefinition, PeergridError
from scheduler.settings import Settings
from web.apiclient import ApiClient, ApiError

FINISHED = ("succeeded", "failed", "cancelled")


def _fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _logging(level: str = "INFO") -> None:
    from web.logformat import configure

    configure(level, os.environ.get("PEERGRID_LOG_FORMAT", "text"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="peergrid")
def main() -> None:
    """peergrid: pool GPUs, post container jobs, pay providers by the second."""


# -- server processes ----------------------------------------------------------------------


def _core():
    from scheduler.core import Core

    try:
        return Core.from_settings(Settings.from_env())
    except PeergridError as e:
        _fail(str(e))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the embedded store and broker live [./var].")
@click.option("--simulate-gpus", metavar="SPEC", help='Give the local worker made-up GPUs, e.g. "NVIDIA GeForce RTX 4090:24x2".')
@click.option("--no-worker", is_flag=True, help="Do not start a local worker.")
def up(host: str, port: int, data_dir: str | None, simulate_gpus: str | None, no_worker: bool) -> None:
    """Run web, scheduler and a local worker together on this machine."""
    from web.up import run_up

    sys.exit(run_up(host=host, port=port, data_dir=data_dir, simulate_gpus=simulate_gpus, worker=not no_worker))


@main.group()
def db() -> None:
    """The job store."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to PEERGRID_DATABASE_URL."""
    from scheduler.migrate import upgrade

    settings = Settings.from_env()
    upgrade(settings.database_url)
    click.echo(f"The store at {_redact(settings.database_url)} is up to date.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def web(host: str, port: int, threads: int) -> None:
    """Serve the web app and APIs."""
    import waitress

    from web import create_app

    _logging()
    app = create_app(Settings.from_env())
    click.echo(f"Serving on http://{host}:{port}/", err=True)
    waitress.serve(app, host=host, port=port, threads=threads, ident="peergrid", clear_untrusted_proxy_headers=True)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def scheduler(loglevel: str) -> None:
    """Run the trusted scheduler service (Celery worker with beat)."""
    from scheduler.celery_app import SCHEDULER_QUEUE, make_celery

    app = make_celery(Settings.from_env())
    app.worker_main(
        ["worker", "--beat", "-Q", SCHEDULER_QUEUE, "--pool", "solo", "--loglevel", loglevel, "--without-mingle", "--without-gossip"]
    )


@main.command()
@click.option("--server", envvar="PEERGRID_SERVER", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PEERGRID_NODE_TOKEN", required=True, help="The node token from `peergrid node create`.")
@click.option("--name", help="A label for logs; the node's name is the one it was created with.")
@click.option("--simulate-gpus", metavar="SPEC", help="Made-up GPUs for development and tests; shown as simulated.")
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1, 256), help="CPU ops run at once.")
@click.option("--job-network", envvar="PEERGRID_JOB_NETWORK", default="bridge", show_default=True,
              help='Network for job containers: "none" (no outbound network) or a Docker network name; never "host".')
@click.option("--job-memory-mb", type=click.IntRange(64), envvar="PEERGRID_JOB_MEMORY_MB", help="Memory limit per container.")
@click.option("--job-cpus", type=click.FloatRange(0.1), envvar="PEERGRID_JOB_CPUS", help="CPU limit per container.")
@click.option("--events/--no-events", envvar="PEERGRID_WORKER_EVENTS", default=True, show_default=True,
              help="Send Celery worker events so Flower lists this node (needs publish rights on the broker).")
def worker(server: str, token: str, name: str | None, simulate_gpus: str | None, slots: int, job_network: str,
           job_memory_mb: int | None, job_cpus: float | None, events: bool) -> None:
    """Run the provider's agent: take offers and run them in Docker."""
    from worker.agent import Agent
    from worker.errors import WorkerError
    from worker.settings import WorkerSettings

    _logging()
    try:
        settings = WorkerSettings.from_env(
            server=server, token=token, name=name, simulate_gpus=simulate_gpus, slots=slots, job_network=job_network,
            memory_limit_mb=job_memory_mb, cpu_limit=job_cpus, events=events,
        )
        agent = Agent(settings)
    except WorkerError as e:
        _fail(str(e))

    def _stop(signum, _frame):
        logging.getLogger("worker").info("stopping (signal %s): stopping running containers and reporting them", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run()
    except WorkerError as e:
        _fail(str(e))


# -- admin ---------------------------------------------------------------------------------


@main.group()
def admin() -> None:
    """Accounts and tokens (run on the server, against its store)."""


@admin.command("create-user")
@click.argument("email")
@click.option("--admin", "is_admin", is_flag=True, help="Make the account an admin.")
@click.option("--password", help="Prompted for when omitted.")
def create_user_cmd(email: str, is_admin: bool, password: str | None) -> None:
    """Create an account."""
    from scheduler.accounts import create_user

    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    core = _core()
    try:
        with core.transaction() as session:
            user = create_user(session, email, password, is_admin=is_admin, starter_credits=core.settings.starter_credits)
    except PeergridError as e:
        _fail(str(e))
    click.echo(f"Created {'admin ' if is_admin else ''}account {user.email} (id {user.id}).")


@admin.command("create-token")
@click.argument("email")
@click.option("--name", default="cli", show_default=True)
def create_token_cmd(email: str, name: str) -> None:
    """Print a new API token for an account, and nothing else."""
    from scheduler.accounts import create_api_token, find_user

    core = _core()
    with core.transaction() as session:
        user = find_user(session, email)
        if user is None:
            _fail(f"There is no account {email}; create it with `peergrid admin create-user {email}`.")
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

    core = _core()
    try:
        micro = ledger.parse_credits(amount)
        with core.transaction() as session:
            user = find_user(session, email)
            if user is None:
                _fail(f"There is no account {email}; create it with `peergrid admin create-user {email}`.")
            ledger.grant(session, user, micro, memo=memo or "Granted from the command line.")
            available = ledger.balances(session, user.id)["available"]
    except PeergridError as e:
        _fail(str(e))
    click.echo(f"Granted {ledger.credits(micro)} credits to {email}; available now {ledger.credits(available)}.")


@admin.command("check-books")
def check_books_cmd() -> None:
    """Exit 0 and print the totals when the ledger balances; exit 1 and say where it does not."""
    from scheduler import ledger

    core = _core()
    with core.transaction() as session:
        books = ledger.check_books(session)
    for name, value in books.totals.items():
        click.echo(f"{name:<16} {ledger.credits(value):>20} credits")
    if books.balanced:
        click.echo("The books balance.")
        return
    for problem in books.problems:
        click.echo(f"UNBALANCED: {problem}", err=True)
    sys.exit(1)


@admin.group("market")
def market() -> None:
    """Markets: which hardware an op gets, and its price."""


def _market_fields(gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout, name) -> dict:
    fields = {
        "name": name,
        "gpu_count": gpus,
        "min_vram_mb": None if min_vram_gb is None else int(min_vram_gb * 1000),
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
    core = _core()
    try:
        with core.transaction() as session:
            created = create_market(session, slug, **fields)
    except PeergridError as e:
        _fail(str(e))
    click.echo(f"Created market {created.slug} (queue {created.queue}).")


@market.command("update")
@click.argument("slug")
@_with_market_options
def market_update(slug, name, gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout) -> None:
    """Change a market's requirements or price."""
    from scheduler.markets import update_market

    fields = _market_fields(gpus, min_vram_gb, models, min_compute, min_cuda, price, fee_percent, max_timeout, name)
    core = _core()
    try:
        with core.transaction() as session:
            update_market(session, slug, **fields)
    except PeergridError as e:
        _fail(str(e))
    click.echo(f"Updated market {slug}.")


@market.command("list")
def market_list() -> None:
    """Every market with its requirements and price."""
    from sqlalchemy import select

    from scheduler.models import Market

    core = _core()
    with core.transaction() as session:
        rows = list(session.scalars(select(Market).order_by(Market.gpu_count, Market.price_per_second)))
        for m in rows:
            need = "CPU" if m.gpu_count == 0 else f"{m.gpu_count} GPU ≥ {m.min_vram_mb / 1000:g} GB"
            if m.gpu_models:
                need += f" ({', '.join(m.gpu_models)})"
            click.echo(f"{m.slug:<14} {need:<34} {m.price_per_second:>6} µcr/s  fee {m.fee_ppm / 10_000:g}%  max {m.max_timeout_s} s")


# -- client commands -----------------------------------------------------------------------


def _client() -> ApiClient:
    token = os.environ.get("PEERGRID_TOKEN")
    if not token:
        _fail("Set PEERGRID_TOKEN to an API token (`peergrid admin create-token EMAIL` prints one).")
    return ApiClient(os.environ.get("PEERGRID_SERVER", "http://127.0.0.1:8000"), token)


def _api(call):
    try:
        return call()
    except ApiError as e:
        if e.body.get("errors"):
            for problem in e.body["errors"]:
                click.echo(f"{problem['path']}: {problem['message']}", err=True)
            sys.exit(1)
        _fail(str(e))


def _read_definition(path: str) -> object:
    try:
        text = Path(path).read_text()
    except OSError as e:
        _fail(f"Cannot read {path}: {e.strerror}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        click.echo(f"$: {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.", err=True)
        sys.exit(1)


@main.group()
def job() -> None:
    """Validate, submit and follow jobs."""


@job.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def job_validate(file: str, as_json: bool) -> None:
    """Exit 0 if the definition is valid, else print each problem as `PATH: message`."""
    from scheduler.jobdef import parse_definition

    document = _read_definition(file)
    try:
        definition = parse_definition(document)
    except InvalidDefinition as e:
        if as_json:
            click.echo(json.dumps({"valid": False, "errors": [p.as_dict() for p in e.problems]}, indent=2))
        else:
            for problem in e.problems:
                click.echo(str(problem))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"valid": True, "ops": [o.key for o in definition.ops],
                               "warnings": [w.as_dict() for w in definition.warnings]}, indent=2))
    else:
        for warning in definition.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{file}: valid, {len(definition.ops)} op(s): {', '.join(o.key for o in definition.ops)}")


@job.command("submit")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--market", help="The market's slug, for ops that name none.")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit 0 only if it succeeded.")
@click.option("--follow", is_flag=True, help="Print its log lines as they arrive, until it ends.")
def job_submit(file: str, market: str | None, wait: bool, follow: bool) -> None:
    """Submit a job definition and print the job's id."""
    client = _client()
    document = _read_definition(file)
    created = _api(lambda: client.post("/jobs", document, market=market))
    click.echo(created["id"])
    if follow:
        state = _follow_logs(client, created["id"], None)
        sys.exit(0 if state == "succeeded" else 1)
    if wait:
        state = _wait(client, created["id"])
        click.echo(f"job {created['id']} {state}", err=True)
        sys.exit(0 if state == "succeeded" else 1)


def _wait(client: ApiClient, job_id: int) -> str:
    delay = 0.2
    while True:
        state = _api(lambda: client.get(f"/jobs/{job_id}"))["state"]
        if state in FINISHED:
            return state
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _follow_logs(client: ApiClient, job_id: int, op: str | None) -> str:
    after = 0
    while True:
        page = _api(lambda: client.get(f"/jobs/{job_id}/logs", op=op, after=after))
        for line in page["lines"]:
            click.echo(f"[{line['op']}] {line['text']}", err=line["stream"] == "stderr")
        after = page["next"]
        if page["state"] in FINISHED and not page["lines"]:
            return page["state"]
        if not page["lines"]:
            time.sleep(0.5)


@job.command("status")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def job_status(job_id: int, as_json: bool) -> None:
    """Show a job's state and its ops'."""
    body = _api(lambda: _client().get(f"/jobs/{job_id}"))
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"job {body['id']}: {body['state']}  cost {body['cost'] / 1e6:.6f} credits")
    for op in body["ops"]:
        node = op["node"]["name"] if op["node"] else "-"
        code = "" if op["exit_code"] is None else f" exit {op['exit_code']}"
        note = f"  ({op['error']})" if op["error"] else ""
        click.echo(f"  {op['id']}: {op['state']}{code} on {node}{note}")
        for key, value in (op.get("results") or {}).items():
            click.echo(f"    {key} = {value}")


@job.command("logs")
@click.argument("job_id", type=int)
@click.option("--op", help="Only this op's lines.")
@click.option("--follow", is_flag=True, help="Keep printing new lines until the job ends.")
def job_logs(job_id: int, op: str | None, follow: bool) -> None:
    """Print a job's log lines."""
    client = _client()
    if follow:
        _follow_logs(client, job_id, op)
        return
    after = 0
    while True:
        page = _api(lambda: client.get(f"/jobs/{job_id}/logs", op=op, after=after))
        for line in page["lines"]:
            click.echo(line["text"] if op else f"[{line['op']}] {line['text']}")
        if not page["lines"]:
            return
        after = page["next"]


@job.command("cancel")
@click.argument("job_id", type=int)
def job_cancel(job_id: int) -> None:
    """Cancel a job: running containers are stopped, the rest never start."""
    body = _api(lambda: _client().post(f"/jobs/{job_id}/cancel"))
    click.echo(f"job {body['id']}: {body['state']}")


@job.command("extend")
@click.argument("job_id", type=int)
@click.argument("seconds", type=click.IntRange(min=1))
def job_extend(job_id: int, seconds: int) -> None:
    """Give a running job's ops more time (up to their market's maximum)."""
    body = _api(lambda: _client().post(f"/jobs/{job_id}/extend", {"seconds": seconds}))
    limits = ", ".join(f"{op['id']} {op['timeout']} s" for op in body["ops"] if op["state"] in ("pending", "queued", "running"))
    click.echo(f"job {body['id']}: time limits now {limits}")


@job.command("download")
@click.argument("job_id", type=int)
@click.argument("op")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write it [job-ID-OP.tar.gz].")
def job_download(job_id: int, op: str, output: str | None) -> None:
    """Download an op's output folder as a .tar.gz."""
    import hashlib

    client = _client()
    listing = _api(lambda: client.get(f"/jobs/{job_id}/artifacts"))["artifacts"]
    artifact = next((a for a in listing if a["op"] == op), None)
    if artifact is None:
        have = ", ".join(a["op"] for a in listing) or "none"
        _fail(f"Op {op!r} of job {job_id} has no output (ops with output: {have}).")
    target = Path(output or f"job-{job_id}-{op}.tar.gz")
    digest = hashlib.sha256()
    with client.http.get(client.server + artifact["url"], stream=True, timeout=300) as response:
        if response.status_code >= 400:
            _fail(f"The download failed: {response.status_code} {response.reason}.")
        with open(target, "wb") as out:
            for chunk in response.iter_content(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != artifact["sha256"]:
        target.unlink(missing_ok=True)
        _fail("The download arrived damaged (checksum mismatch); try again.")
    click.echo(str(target))


@main.command()
def balance() -> None:
    """Your credits: available, in escrow, earned, and in payout requests."""
    from scheduler.ledger import credits

    body = _api(lambda: _client().get("/ledger/balance"))
    for name in ("available", "escrow", "earnings", "payout_pending"):
        click.echo(f"{name.replace('_', ' '):<15} {credits(body[name]):>16} credits")


@main.group()
def payout() -> None:
    """Ask for your earnings to be paid out, and see your requests."""


@payout.command("request")
@click.argument("amount")
def payout_request(amount: str) -> None:
    """Ask for AMOUNT credits of your earnings to be paid out."""
    from scheduler.ledger import credits, parse_credits

    try:
        micro = parse_credits(amount)
    except PeergridError as e:
        _fail(str(e))
    body = _api(lambda: _client().post("/payouts", {"amount": micro}))
    click.echo(f"payout {body['id']}: {credits(body['amount'])} credits {body['state']}")


@payout.command("list")
def payout_list() -> None:
    """Your payout requests and what became of them."""
    from scheduler.ledger import credits

    for p in _api(lambda: _client().get("/payouts"))["payouts"]:
        detail = p["reference"] or p["reason"] or ""
        click.echo(f"{p['id']:>5}  {credits(p['amount']):>12}  {p['state']:<9} {detail}")


@main.group()
def node() -> None:
    """Register machines as nodes."""


@node.command("list")
@click.option("--json", "as_json", is_flag=True)
def node_list(as_json: bool) -> None:
    """Your nodes (all of them, for an admin), their state and GPUs."""
    nodes = _api(lambda: _client().get("/nodes"))["nodes"]
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
        return
    if not nodes:
        click.echo("No nodes yet: `peergrid node create NAME` registers one.")
    for n in nodes:
        gpus = ", ".join(f"{g['name']} {g['memory_total_mb'] / 1024:.0f} GB" for g in n["gpus"]) or (n["gpu_message"] or "no GPUs")
        simulated = " (simulated)" if n["simulated"] else ""
        click.echo(f"{n['id']:>4}  {n['name']:<20} {n['state']:<9} {gpus}{simulated}")


def _node_id(client: ApiClient, name_or_id: str) -> int:
    nodes = _api(lambda: client.get("/nodes"))["nodes"]
    match = [n for n in nodes if n["name"] == name_or_id or str(n["id"]) == name_or_id]
    if len(match) != 1:
        _fail(f"No node {name_or_id!r} of yours; `peergrid node list` shows them.")
    return match[0]["id"]


@node.command("drain")
@click.argument("node_name")
@click.option("--undo", is_flag=True, help="Take the node back into service.")
def node_drain(node_name: str, undo: bool) -> None:
    """Let a node finish what it runs and take nothing new (or, with --undo, take work again)."""
    client = _client()
    node_id = _node_id(client, node_name)
    body = _api(lambda: client.post(f"/nodes/{node_id}/drain", {"drain": not undo}))
    later = " (it drains when it comes back)" if body.get("drain_requested") and body["state"] == "offline" else ""
    click.echo(f"node {body['name']}: {body['state']}{later}")


@node.command("create")
@click.argument("name")
def node_create(name: str) -> None:
    """Register a node and print its token, once, and nothing else."""
    body = _api(lambda: _client().post("/nodes", {"name": name}))
    click.echo(body["token"])


@main.group()
def secret() -> None:
    """Keep values on the server that jobs use as %%secrets.NAME%%; they are never shown again."""


@secret.command("set")
@click.argument("name")
def secret_set(name: str) -> None:
    """Store a secret or replace its value, read from stdin when piped, else asked for (hidden).

    Never on the command line, where the shell history and `ps` would keep it.
    """
    from scheduler.secrets import check_name

    try:
        check_name(name)
    except PeergridError as e:
        _fail(str(e))
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        # `echo VALUE | peergrid secret set NAME` ends the value with a newline that is not part of it.
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    body = _api(lambda: _client().request("PUT", f"/secrets/{name}", json={"value": value}))
    click.echo(f"secret {body['name']} stored; jobs use it as %%secrets.{body['name']}%%")


@secret.command("list")
@click.option("--json", "as_json", is_flag=True)
def secret_list(as_json: bool) -> None:
    """Your secrets' names and when each was last set; never their values."""
    secrets = _api(lambda: _client().get("/secrets"))["secrets"]
    if as_json:
        click.echo(json.dumps(secrets, indent=2))
        return
    if not secrets:
        click.echo("No secrets yet: `peergrid secret set NAME` stores one.")
    for s in secrets:
        click.echo(f"{s['name']:<32} set {s['updated_at']}")


@secret.command("delete")
@click.argument("name")
def secret_delete(name: str) -> None:
    """Delete a secret; an op that names it and has not started yet fails, saying why."""
    _api(lambda: _client().request("DELETE", f"/secrets/{name}"))
    click.echo(f"secret {name} deleted")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


if __name__ == "__main__":
    main()
