"""Make accounts, tokens, nodes and apps on a store, for tests."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

from scheduler import ledger
from scheduler.accounts import create_api_token, create_user
from scheduler.core import Core
from scheduler.nodes import create_node
from scheduler.settings import Settings

PASSWORD = "correct horse battery"


def user(core: Core, *, email: str | None = None, admin: bool = False, credits: int = 1000) -> tuple[int, str]:
    """Create an account holding `credits` credits; return its id and an API token."""
    with core.transaction() as session:
        row = create_user(session, email or f"{uuid.uuid4().hex[:8]}@example.com", PASSWORD, is_admin=admin)
        if credits:
            ledger.grant(session, row, credits * ledger.MICRO, memo="test credits")
        token = create_api_token(session, row, "test")
    return row.id, token


def node(core: Core, owner_email: str | None = None, *, name: str | None = None) -> tuple[int, str, str]:
    """Create an account and a node of it; return the node id, the node token and the owner's API token."""
    from sqlalchemy import select

    from scheduler.models import User

    owner_id, api_token = user(core, email=owner_email)
    with core.transaction() as session:
        owner = session.scalar(select(User).where(User.id == owner_id))
        row, token = create_node(session, owner, name or f"node-{uuid.uuid4().hex[:6]}")
    return row.id, token, api_token


def join_token(core: Core, owner_id: int | None = None, *, name: str = "test") -> str:
    """Make a join token of owner_id (of a new account when not given) and return it."""
    from scheduler.joining import create_join_token
    from scheduler.models import User

    if owner_id is None:
        owner_id, _ = user(core)
    with core.transaction() as session:
        _, token = create_join_token(session, session.get(User, owner_id), name)
    return token


def hello_world(image: str, cmd=None) -> dict:
    return {
        "version": "0.1",
        "type": "container",
        "ops": [
            {
                "type": "container/run",
                "id": "hello-world",
                "args": {"image": image, "cmd": cmd if cmd is not None else ["echo", "hello", "world"]},
            }
        ],
    }


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def served(database_url: str, tmp_path, **env: str):
    """Yield a core and a test client of an app on database_url, with extra PEERGRID_* settings."""
    settings = Settings.from_env(
        {"PEERGRID_DATABASE_URL": database_url, "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.sqlite",
         "PEERGRID_SECRET_KEY": "x", **env},
        data_dir=tmp_path,
    )
    core = Core.from_settings(settings)
    try:
        from web import create_app

        yield core, create_app(core=core).test_client()
    finally:
        core.close()


def many_ops(n: int, shape: str) -> dict:
    """A definition of n ops: `sequence` (no groups: each waits for the one before), `group` (one
    group, all at once) or `chain` (one group, each op depending on the next one listed)."""
    ops = []
    for i in range(n):
        op = {"id": f"op-{i}", "type": "container/run",
              "args": {"image": "busybox", "cmd": ["echo", "%%global.job%%"], "env": {"I": str(i)}}}
        if shape == "group":
            op["execution"] = {"group": "all"}
        elif shape == "chain":
            op["execution"] = {"group": "all", "depends_on": [f"op-{i + 1}"] if i + 1 < n else []}
        ops.append(op)
    return {"version": "0.1", "ops": ops}
