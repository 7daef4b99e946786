"""`peergrid health`: a container's health check, from the health file its process writes.

Docker runs it every few seconds, in the server's images and on providers' machines alike, so it
imports click, the standard library and protocol, and nothing else.
"""

from __future__ import annotations

import sys
import time

import click

from cli import main
from protocol.liveness import GRACE_S, examine

URL_TIMEOUT_S = 5.0


@main.command()
@click.argument("file", envvar="PEERGRID_HEALTH_FILE", type=click.Path(dir_okay=False))
@click.option("--url", help="Also GET this http(s) URL, and be healthy only if it answers 2xx within 5 s.")
@click.option("--grace", type=click.FloatRange(min=0), default=GRACE_S, show_default=True,
              help="Seconds a loop may be late past its interval before it counts as dead (it always gets three intervals).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Check again every second until healthy, for up to this long; for scripts that start a service.")
def health(file: str, url: str | None, grace: float, wait_s: float) -> None:
    """Exit 0 when every loop recorded in FILE went round lately; else exit 1, a line per problem.

    FILE is the health file the process writes (its --health-file, or PEERGRID_HEALTH_FILE, which is
    read when FILE is not given).
    """
    if url is not None and not url.startswith(("http://", "https://")):
        raise click.BadParameter("give an http:// or https:// URL.", param_hint="--url")
    deadline = time.monotonic() + wait_s
    while True:
        said, problems = _checkup(file, url, grace)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if problems:
        for problem in problems:
            click.echo(f"unhealthy: {problem}")
        sys.exit(1)
    click.echo(f"healthy: {', '.join(said)}")


def _checkup(file: str, url: str | None, grace: float) -> tuple[list[str], list[str]]:
    """What is well and what is wrong, now: the health file's loops, then the URL's answer."""
    checkup = examine(file, grace_s=grace)
    problems = list(checkup.problems)
    said = [checkup.summary()] if checkup.healthy else []
    if url is not None:
        answered, sentence = _get(url)
        (said if answered else problems).append(sentence)
    return said, problems


def _get(url: str) -> tuple[bool, str]:
    """GET url; say whether it answered 2xx, and what it answered, in a phrase."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        return False, f"{url} answered {e.code}"
    except TimeoutError:
        return False, f"{url} did not answer within {URL_TIMEOUT_S:g} s"
    except (urllib.error.URLError, OSError) as e:
        return False, f"{url} does not answer: {getattr(e, 'reason', None) or e}"
    return 200 <= status < 300, f"{url} answered {status}"
