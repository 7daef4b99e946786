"""A provider's machine runs the worker without the server's libraries, and client commands start light.

Each test runs a fresh interpreter: what one process has imported says nothing about another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories

ROOT = Path(__file__).resolve().parent.parent

SERVER_LIBRARIES = ("flask", "sqlalchemy", "alembic", "psycopg", "werkzeug", "jinja2")

# Makes the server's libraries unimportable, as on a machine where they were never installed.
BLOCKER = f"""
import sys

class ServerLibrariesAbsent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {SERVER_LIBRARIES!r}:
            raise ImportError(f"No module named {{name!r}} (blocked: not on a provider's machine)")
        return None

sys.meta_path.insert(0, ServerLibrariesAbsent())
"""


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("library", SERVER_LIBRARIES)
def test_the_blocker_makes_each_server_library_unimportable(library):
    done = python(BLOCKER + f"import {library}\n")

    assert done.returncode != 0
    assert "blocked: not on a provider's machine" in done.stderr


@pytest.mark.parametrize("command,says", [
    ("worker", ["Usage: peergrid worker [OPTIONS]", "--server", "--token", "--health-file"]),
    ("health", ["Usage: peergrid health [OPTIONS] FILE", "--url"]),
])
def test_the_worker_and_its_commands_run_without_the_servers_libraries(command, says):
    # Given a process where Flask, SQLAlchemy, Alembic and psycopg cannot be imported
    # When every module of the worker is imported and `peergrid COMMAND --help` runs
    done = python(BLOCKER + """
import importlib
import json
import pkgutil

import worker

def fail(name):
    raise ImportError(f"cannot import {name}")

for module in pkgutil.walk_packages(worker.__path__, "worker.", onerror=fail):
    importlib.import_module(module.name)

import cli

try:
    cli.main([%r, "--help"], prog_name="peergrid")
except SystemExit as e:
    code = e.code
server_side = sorted(m for m in sys.modules if m.partition(".")[0] in ("scheduler", "web"))
print(json.dumps({"code": code, "server_side": server_side}), file=sys.stderr)
""" % command)

    # Then the help is printed, and nothing of the server's code was loaded either
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(says[0])
    assert all(word in done.stdout for word in says[1:])
    assert json.loads(done.stderr.splitlines()[-1]) == {"code": 0, "server_side": []}


# Prints, as the process ends, every module it imported.
MODULES_AT_EXIT = """
import atexit
import json
import runpy
import sys

atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["peergrid", *{args!r}]
runpy.run_module("cli", run_name="__main__")
"""

HEAVY = {"flask", "sqlalchemy", "alembic", "psycopg", "celery", "kombu", "docker", "requests", "web"}


@pytest.mark.parametrize("command", ["validate", "help", "health"])
def test_client_commands_load_none_of_the_heavy_libraries(command, tmp_path):
    from protocol.liveness import Liveness

    definition = tmp_path / "hello.json"
    definition.write_text(json.dumps(factories.hello_world("ubuntu")))
    Liveness(tmp_path / "health.json").beat("offers", 1)
    args, expected, uses = {
        "validate": (["job", "validate", str(definition)], "valid, 1 op(s): hello-world", "scheduler.jobdef"),
        "help": (["--help"], "Commands:", "cli.client"),
        # Docker runs it every few seconds.
        "health": (["health", str(tmp_path / "health.json")], "healthy: offers", "protocol.liveness"),
    }[command]

    done = python(MODULES_AT_EXIT.format(args=args))

    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    modules = json.loads(done.stderr.splitlines()[-1])
    assert uses in modules  # the hook saw the command's own imports
    assert sorted(HEAVY & {m.partition(".")[0] for m in modules}) == []
