"""Apply and inspect the store's Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

import migrations
from scheduler.errors import PeergridError


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Alembic's ini interpolation treats % specially.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the store at database_url up to the given revision.

    Raises:
        PeergridError: a PostgreSQL database that does not keep its text as UTF-8.
    """
    check_encoding(database_url)
    command.upgrade(alembic_config(database_url), revision)


def check_encoding(database_url: str) -> None:
    """Refuse a PostgreSQL database whose encoding is not UTF-8, saying how to make one that is.

    A SQL_ASCII database (what initdb makes under the C locale) hands text back as bytes, and
    SQLAlchemy then fails on its first connection with a TypeError, so this asks psycopg itself.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    import psycopg

    args = {k: v for k, v in url.translate_connect_args(username="user", database="dbname").items() if v is not None}
    try:
        with psycopg.connect(**args, **dict(url.query), connect_timeout=10) as conn:
            encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    except psycopg.Error:
        return  # unreachable or refused: Alembic's own connection says so
    if isinstance(encoding, bytes):
        encoding = encoding.decode("ascii", "replace")
    if encoding.upper().replace("-", "") != "UTF8":
        raise PeergridError(
            f"The database {url.database} keeps its text as {encoding}, and peergrid needs UTF-8: make it with "
            f"`createdb --encoding=UTF8 --template=template0 {url.database}` (or initdb --encoding=UTF8) and point "
            "PEERGRID_DATABASE_URL at it."
        )


def heads(database_url: str = "sqlite://") -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
