"""Rules of the code's shape that a reader relies on: which layer imports which, and guards that
python -O cannot strip."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("scheduler", "worker", "web", "protocol", "cli", "gateway")


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package,forbidden", [
    ("scheduler", {"web", "worker", "cli", "flask"}),
    ("worker", {"scheduler", "web", "cli", "flask", "sqlalchemy", "alembic", "psycopg"}),
    ("protocol", {"scheduler", "web", "worker", "cli", "flask", "sqlalchemy", "kombu", "requests", "docker"}),
    # The gateway is a server process beside the web: the store through scheduler, never the web's code.
    ("gateway", {"web", "worker", "cli", "flask"}),
])
def test_each_layer_imports_only_what_sits_below_it(package, forbidden):
    found = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden) for p in _modules(package)}
    assert not {k: v for k, v in found.items() if v}


def test_no_guard_in_shipped_code_is_an_assert():
    """python -O strips assert statements, so a check that must hold is an if that raises."""
    asserts = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in SHIPPED
        for path in _modules(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert asserts == []
