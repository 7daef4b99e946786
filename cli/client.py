"""Commands that call a server's API with an API token: job, node, secret, balance, payout.

Each imports what it uses inside it (the HTTP client, the job definition's rules), so that a
command starts without what the others need: `peergrid job validate` never loads requests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli import fail, main
from protocol.gpus import gb_text
from protocol.names import op_slug

if TYPE_CHECKING:
    from cli.apiclient import ApiClient

FINISHED = ("succeeded", "failed", "cancelled")


def _client() -> ApiClient:
    from cli.apiclient import ApiClient

    token = os.environ.get("PEERGRID_TOKEN")
    if not token:
        fail("Set PEERGRID_TOKEN to an API token (`peergrid admin create-token EMAIL` prints one).")
    return ApiClient(os.environ.get("PEERGRID_SERVER", "http://127.0.0.1:8000"), token)


def _api(call):
    from cli.apiclient import ApiError

    try:
        return call()
    except ApiError as e:
        if e.body.get("errors"):
            for problem in e.body["errors"]:
                click.echo(f"{problem['path']}: {problem['message']}", err=True)
            sys.exit(1)
        fail(str(e))


def _read_definition(path: str) -> object:
    try:
        text = Path(path).read_text()
    except OSError as e:
        fail(f"Cannot read {path}: {e.strerror}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        click.echo(f"$: {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.", err=True)
        sys.exit(1)
    except RecursionError:
        click.echo(f"$: {path} nests deeper than can be read; flatten it.", err=True)
        sys.exit(1)


@main.group()
def job() -> None:
    """Validate, submit and follow jobs."""


@job.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems (and the plan) as JSON.")
@click.option("--market", help="The market's slug, for ops that name none.")
@click.option("--array", "array", metavar="SPEC", help="Check it as an array's (%%array.index%% allowed), planned for SPEC's jobs.")
def job_validate(file: str, as_json: bool, market: str | None, array: str | None) -> None:
    """Exit 0 if the definition is valid, else print each problem as `PATH: message`.

    With PEERGRID_TOKEN set, the server also plans it as a submit would (each op's market, the most
    it can cost, your credits), so a definition that validates is one that submit accepts.
    """
    from scheduler.credits import credits

    document = _read_definition(file)
    plan = None
    if os.environ.get("PEERGRID_TOKEN"):
        from cli.apiclient import ApiError  # only here: offline, validate loads no HTTP library

        try:
            plan = _client().post("/jobs/validate", document, market=market, array=array)
        except ApiError as e:
            if e.body.get("errors"):
                plan = {"valid": False, "errors": e.body["errors"], "warnings": [], "ops": []}
            else:
                click.echo(f"Could not plan it on the server, so only the definition was checked: {e}", err=True)
    else:
        click.echo("Could not plan it without a server (set PEERGRID_TOKEN to check markets, cost and "
                   "credits too); only the definition was checked.", err=True)
    if plan is None:
        plan = _validate_offline(document, in_array=array is not None)
    if as_json:
        click.echo(json.dumps(plan, indent=2))
    else:
        for problem in plan["errors"]:
            click.echo(f"{problem['path']}: {problem['message']}")
        for warning in plan["warnings"]:
            click.echo(f"warning: {warning['path']}: {warning['message']}", err=True)
        if plan["valid"]:
            click.echo(f"{file}: valid, {len(plan['ops'])} op(s): {', '.join(_planned(o) for o in plan['ops'])}")
            if "max_cost" in plan:
                click.echo(f"at most {credits(plan['max_cost'])} credits; {credits(plan['available'])} available")
    if not plan["valid"]:
        sys.exit(1)


def _validate_offline(document, *, in_array: bool = False) -> dict:
    from scheduler.errors import InvalidDefinition
    from scheduler.jobdef import parse_definition

    try:
        definition = parse_definition(document, in_array=in_array)
    except InvalidDefinition as e:
        return {"valid": False, "errors": [p.as_dict() for p in e.problems], "warnings": [], "ops": []}
    return {"valid": True, "errors": [], "warnings": [w.as_dict() for w in definition.warnings],
            "ops": [{"id": o.key} for o in definition.ops]}


def _planned(op: dict) -> str:
    from scheduler.credits import credits

    if "market" not in op:
        return op["id"]
    return f"{op['id']} (market {op['market']}, at most {credits(op['max_cost'])} credits)"


# How many times a submit is sent when the connection breaks before the answer: about 15 s in all.
SUBMIT_TRIES = 6


@job.command("submit")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--market", help="The market's slug, for ops that name none.")
@click.option("--priority", type=int, default=None, metavar="N",
              help="Higher runs first; 0 by default, below 0 lets others go first; at most your cap.")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit 0 only if it succeeded.")
@click.option("--wait-ready", is_flag=True,
              help="Wait until every endpoint of its services is ready, then print their URLs; exit 1 if it ends first.")
@click.option("--follow", is_flag=True, help="Print its log lines as they arrive, until it ends.")
@click.option("--idempotency-key", "key", metavar="KEY",
              help="Send this key instead of a new one: a submit that may have been made already answers that job.")
@click.option("--array", "array", metavar="SPEC",
              help="Submit an array of jobs, one per index (0-99, 0-999%50 for at most 50 running, 1,3,5-9, 0-20:5); "
                   "print the array's id. Each job sees PEERGRID_ARRAY_INDEX and %%array.index%%.")
def job_submit(file: str, market: str | None, priority: int | None, wait: bool, wait_ready: bool, follow: bool,
               key: str | None, array: str | None) -> None:
    """Submit a job definition and print the job's id (with --array, the array's).

    The submit carries an Idempotency-Key, so when the connection breaks before the answer it is
    sent again, and however often it reaches the server it makes one job.
    """
    if array is not None and (wait_ready or follow):
        fail("--array takes --wait, not --wait-ready or --follow: follow one of its jobs with `peergrid job logs`.")
    import uuid

    from cli.apiclient import ApiError

    client = _client()
    document = _read_definition(file)
    key = key or str(uuid.uuid4())

    def retrying(why: str, seconds: float) -> None:
        click.echo(f"No answer from the server ({why}); sending the submit again in {seconds:g} s, "
                   "with the same Idempotency-Key.", err=True)

    params = {"market": market, "priority": priority, "array": array}
    params = {k: v for k, v in params.items() if v is not None} or None

    def submit():
        try:
            return client.request(
                "POST", "/jobs", json=document, params=params,
                headers={"Idempotency-Key": key}, tries=SUBMIT_TRIES, on_retry=retrying,
            )
        except ApiError as e:
            if e.status is None:
                raise ApiError(f"{e} The job may have been made: `peergrid job submit {file} --idempotency-key "
                               f"{key}` answers it, or makes it if it was not.") from e
            raise

    created = _api(submit)
    click.echo(created["id"])
    if array is not None:
        from cli.arrays import wait_for_array

        if wait:
            sys.exit(wait_for_array(client, created["id"]))
        return
    if wait_ready:
        services = {
            op.get("id") for op in (document.get("ops") or []) if isinstance(op, dict)
            and isinstance(op.get("args"), dict) and op["args"].get("expose") not in (None, [], "")
        }
        sys.exit(_wait_ready(client, created["id"], services))
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


def _wait_ready(client: ApiClient, job_id: int, services: set) -> int:
    """Wait until each service op's endpoints are all ready and print them; 1 if the job ends first."""
    delay = 0.2
    while True:
        body = _api(lambda: client.get(f"/jobs/{job_id}"))
        ops = [op for op in body["ops"] if op["id"] in services]
        if all(op["endpoints"] and all(e["ready"] for e in op["endpoints"]) for op in ops):
            for op in ops:
                for endpoint in op["endpoints"]:
                    click.echo(f"{op['id']}  {endpoint['port']}  {endpoint['url']}")
            return 0
        if body["state"] in FINISHED:
            click.echo(f"job {job_id} {body['state']} before its endpoints were ready; `peergrid job status "
                       f"{job_id}` says why.", err=True)
            return 1
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


@job.command("wait")
@click.argument("job_id", type=int)
def job_wait(job_id: int) -> None:
    """Wait for a job to end and print how; exit 0 only if it succeeded."""
    state = _wait(_client(), job_id)
    click.echo(f"job {job_id} {state}")
    sys.exit(0 if state == "succeeded" else 1)


@job.command("status")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def job_status(job_id: int, as_json: bool) -> None:
    """Show a job's state and its ops'."""
    body = _api(lambda: _client().get(f"/jobs/{job_id}"))
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"job {body['id']}: {body['state']}  priority {body.get('priority', 0)}  "
               f"cost {body['cost'] / 1e6:.6f} credits")
    for op in body["ops"]:
        node = op["node"]["name"] if op["node"] else "-"
        code = "" if op["exit_code"] is None else f" exit {op['exit_code']}"
        note = f"  ({op['error']})" if op["error"] else ""
        waiting = op.get("waiting")
        if waiting:
            since = f" (since {_clock(waiting['since'])})" if waiting.get("since") else ""
            click.echo(f"  {op['id']}: {op['state']}  waiting: {waiting['reason']}{since}{note}")
            for line in _waiting_details(waiting):
                click.echo(f"    {line}")
        else:
            click.echo(f"  {op['id']}: {op['state']}{code} on {node}{note}")
        for endpoint in op.get("endpoints") or []:
            if endpoint.get("open", True):
                again = f", restarts {op['restarts']}" if op.get("restarts") else ""
                detail = f" ({endpoint['health_detail']})" if endpoint.get("health_detail") else ""
                click.echo(f"    port {endpoint['port']}: {_endpoint_state(endpoint, op)}{again}{detail}")
        for key, value in (op.get("results") or {}).items():
            click.echo(f"    {key} = {value}")


def _waiting_details(waiting: dict) -> list[str]:
    """Where a waiting op stands beyond its reason: the node it was placed on, GPUs reserved for it
    (each unless the reason names that node already)."""
    lines = []
    placed, reserved = waiting.get("placed_on"), waiting.get("reserved")
    if placed and placed["name"] not in waiting["reason"]:
        lines.append(f"placed on {placed['name']}, which is to start it")
    if reserved and reserved["node"]["name"] not in waiting["reason"]:
        start = f" from {_clock(reserved['from'])}" if reserved.get("from") else ""
        lines.append(f"GPUs reserved on {reserved['node']['name']}{start}")
    return lines


def _clock(iso_time: str) -> str:
    """An API time as a person reads it: 14:05 UTC today, else with its date."""
    from datetime import datetime, timezone

    when = datetime.fromisoformat(iso_time.replace("Z", "+00:00")).astimezone(timezone.utc)
    if when.date() == datetime.now(timezone.utc).date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


@job.command("endpoints")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def job_endpoints(job_id: int, as_json: bool) -> None:
    """List a job's endpoints: op, port, URL, ready or not."""
    body = _api(lambda: _client().get(f"/jobs/{job_id}"))
    rows = [{"op": op["id"], **endpoint} for op in body["ops"] for endpoint in op.get("endpoints") or []]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"job {job_id} has no endpoints: none of its ops exposes a port, or none has started.")
        return
    services = {op["id"]: op for op in body["ops"]}
    for row in rows:
        state = _endpoint_state(row, services[row["op"]])
        private = "  private" if row["private"] else ""
        restarts = services[row["op"]].get("restarts") or 0
        again = f"  restarts {restarts}" if restarts else ""
        detail = f"  ({row['health_detail']})" if row.get("health_detail") and row.get("open", True) else ""
        click.echo(f"{row['op']}  {row['port']}  {row['url']}  {state}{private}{again}{detail}")


def _endpoint_state(endpoint: dict, op: dict) -> str:
    """ready, starting, unhealthy, restarting or closed: how an endpoint stands, in a word or two."""
    if not endpoint.get("open", True):
        return "closed"
    if op.get("restarting"):
        return "restarting"
    if endpoint["ready"]:
        return "ready"
    return "unhealthy" if endpoint.get("health") == "unhealthy" else "not ready"


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
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write it, - for stdout [job-ID-OP.tar.gz, OP made a safe file name].")
def job_download(job_id: int, op: str, output: str | None) -> None:
    """Download an op's output folder as a .tar.gz (checked against its SHA-256)."""
    import hashlib

    client = _client()
    listing = _api(lambda: client.get(f"/jobs/{job_id}/artifacts"))["artifacts"]
    artifact = next((a for a in listing if a["op"] == op), None)
    if artifact is None:
        have = ", ".join(a["op"] for a in listing) or "none"
        fail(f"Op {op!r} of job {job_id} has no output (ops with output: {have}).")
    to_stdout = output == "-"
    target = Path(output or f"job-{job_id}-{op_slug(op)}.tar.gz")
    digest = hashlib.sha256()
    with client.http.get(client.server + artifact["url"], stream=True, timeout=300) as response:
        if response.status_code >= 400:
            fail(f"The download failed: {response.status_code} {response.reason}.")
        with click.open_file("-", "wb") if to_stdout else open(target, "wb") as out:
            for chunk in response.iter_content(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != artifact["sha256"]:
        if not to_stdout:
            target.unlink(missing_ok=True)
        fail("The download arrived damaged (checksum mismatch); try again.")
    if not to_stdout:
        click.echo(str(target))


@main.command()
def balance() -> None:
    """Your credits: available, in escrow, earned, and in payout requests."""
    from scheduler.credits import credits

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
    from scheduler.errors import PeergridError
    from scheduler.credits import credits, parse_credits

    try:
        micro = parse_credits(amount)
    except PeergridError as e:
        fail(str(e))
    body = _api(lambda: _client().post("/payouts", {"amount": micro}))
    click.echo(f"payout {body['id']}: {credits(body['amount'])} credits {body['state']}")


@payout.command("list")
def payout_list() -> None:
    """Your payout requests and what became of them."""
    from scheduler.credits import credits

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
        gpus = ", ".join(f"{g['name']} {gb_text(g['memory_total_mb'])} GB" for g in n["gpus"]) or (n["gpu_message"] or "no GPUs")
        simulated = " (simulated)" if n["simulated"] else ""
        click.echo(f"{n['id']:>4}  {n['name']:<20} {n['state']:<9} {gpus}{simulated}")


def _node_id(client: ApiClient, name_or_id: str) -> int:
    nodes = _api(lambda: client.get("/nodes"))["nodes"]
    match = [n for n in nodes if n["name"] == name_or_id or str(n["id"]) == name_or_id]
    if len(match) != 1:
        fail(f"No node {name_or_id!r} of yours; `peergrid node list` shows them.")
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


@node.command("join-token")
@click.option("--name", "label", default="", metavar="LABEL", help="A label to tell your join tokens apart.")
def node_join_token(label: str) -> None:
    """Make a join token and print it, once, and nothing else.

    A worker started with it (PEERGRID_JOIN_TOKEN) joins as a new node of yours, named by its --name
    (PEERGRID_NODE_NAME, default the machine's hostname); the token can do nothing else.
    """
    body = _api(lambda: _client().post("/join-tokens", {"name": label}))
    click.echo(body["token"])


@node.command("join-tokens")
@click.option("--json", "as_json", is_flag=True)
def node_join_tokens(as_json: bool) -> None:
    """Your join tokens: label, how many nodes each made, and whether it was revoked; never the tokens."""
    tokens = _api(lambda: _client().get("/join-tokens"))["join_tokens"]
    if as_json:
        click.echo(json.dumps(tokens, indent=2))
        return
    if not tokens:
        click.echo("No join tokens yet: `peergrid node join-token` makes one.")
    for t in tokens:
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "active"
        click.echo(f"{t['id']:>4}  {t['name'] or '-':<20} {t['prefix']}…  {t['nodes']:>3} node(s)  {state}")


@node.command("revoke-join-token")
@click.argument("token_id", type=int)
def node_revoke_join_token(token_id: int) -> None:
    """Revoke a join token: it makes no more nodes; the nodes it made keep working."""
    body = _api(lambda: _client().request("DELETE", f"/join-tokens/{token_id}"))
    click.echo(f"join token {body['id']} revoked; the nodes it made keep working")


@main.group()
def secret() -> None:
    """Keep values on the server that jobs use as %%secrets.NAME%%; they are never shown again."""


@secret.command("set")
@click.argument("name")
def secret_set(name: str) -> None:
    """Store a secret or replace its value, read from stdin when piped, else asked for (hidden).

    Never on the command line, where the shell history and `ps` would keep it.
    """
    from scheduler.errors import PeergridError
    from scheduler.references import check_name

    try:
        check_name(name)
    except PeergridError as e:
        fail(str(e))
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
