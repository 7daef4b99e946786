"""The `peergrid` command: the group, and what its commands share.

Server commands live in cli.server, those that call a server's API in cli.client, the provider's
agent in cli.worker, and the containers' health check in cli.health. Heavy imports happen inside the
commands that need them, so a command loads only what it uses and `peergrid worker` runs where the
server's libraries are not installed.
"""

from __future__ import annotations

import os
import sys

import click


def fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def setup_logging(level: str = "INFO") -> None:
    from cli.logformat import configure

    configure(level, os.environ.get("PEERGRID_LOG_FORMAT", "text"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="peergrid")
def main() -> None:
    """peergrid: pool GPUs, post container jobs, pay providers by the second."""


# Importing them registers the commands on main.
from cli import arrays, client, health, server, worker  # noqa: E402,F401
