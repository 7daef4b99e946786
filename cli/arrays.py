"""`peergrid array`: how an array of jobs stands, and cancelling it."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from cli import main

if TYPE_CHECKING:
    from cli.apiclient import ApiClient


@main.group()
def array() -> None:
    """Follow and cancel arrays of jobs (peergrid job submit FILE --array SPEC makes one)."""


@array.command("status")
@click.argument("array_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="The whole answer, with every job's id.")
def array_status(array_id: int, as_json: bool) -> None:
    """Show how many of an array's jobs are in each state."""
    from cli.client import _api, _client

    body = _api(lambda: _client().get(f"/arrays/{array_id}"))
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    limit = f", at most {body['max_running']} running at once" if body.get("max_running") else ""
    click.echo(f"array {body['id']}: {body['state']}, {body['size']} jobs{limit}")
    click.echo(f"  {body['progress']}")
    click.echo(f"  cost {body['cost'] / 1e6:.6f} credits of at most {body['max_cost'] / 1e6:.6f}")


@array.command("cancel")
@click.argument("array_id", type=int)
def array_cancel(array_id: int) -> None:
    """Cancel every unfinished job of an array: running containers are stopped, the rest never start."""
    from cli.client import _api, _client

    body = _api(lambda: _client().post(f"/arrays/{array_id}/cancel"))
    click.echo(f"array {body['id']}: {body['progress']}")


def wait_for_array(client: ApiClient, array_id: int) -> int:
    """Wait until every job of the array has ended, printing its progress as it changes; 0 only if all succeeded."""
    from cli.client import _api

    delay, shown = 0.5, None
    while True:
        body = _api(lambda: client.get(f"/arrays/{array_id}"))
        if body["progress"] != shown:
            shown = body["progress"]
            click.echo(f"array {array_id}: {shown}", err=True)
        if body["done"] >= body["size"]:
            return 0 if body["state"] == "succeeded" else 1
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
