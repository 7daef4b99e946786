"""The models and the migrations describe the same schema, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select

from scheduler.migrate import heads, upgrade
from scheduler.models import Base, Market


def test_there_is_a_single_head():
    assert len(heads()) == 1


def test_autogenerate_finds_nothing_to_change(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_seeds_cpu_and_gpu_markets_and_is_idempotent(database_url):
    upgrade(database_url)  # already at head: nothing happens
    engine = create_engine(database_url)
    with engine.connect() as conn:
        markets = conn.execute(select(Market.slug, Market.queue, Market.gpu_count)).all()
    engine.dispose()
    assert markets[0] == ("cpu", "market.cpu", 0)
    assert {m[2] for m in markets} == {0, 1, 2, 4}
    assert all(queue == f"market.{slug}" for slug, queue, _ in markets)


def test_migrations_that_copy_a_table_keep_the_rows_that_refer_to_it(tmp_path):
    """SQLite alters a table by copying it and dropping the old one; with foreign keys enforced,
    that drop deleted every row referring to it (0010 copies attempts: their events, log lines)."""
    from sqlalchemy import text

    from scheduler.db import make_engine

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(url, "0009")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (email, password_hash, is_admin, created_at) "
                          "VALUES ('a@example.com', 'x', 0, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO jobs (owner_id, state, definition, max_cost, reserved, cost, created_at) "
                          "VALUES (1, 'running', '{}', 0, 0, 0, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO ops (job_id, key, position, type, depends_on, after, stop_if_dependent_stops, "
                          "result_rules, spec, market_id, state, timeout_s, max_attempts) VALUES "
                          "(1, 'a', 0, 'container/run', '[]', '[]', 0, '{}', '{}', 1, 'running', 60, 1)"))
        conn.execute(text("INSERT INTO attempts (op_id, number, state, gpus, created_at, cost, last_log_seq, "
                          "log_bytes, log_full) VALUES (1, 1, 'running', '[]', '2026-01-01 00:00:00', 0, 1, 5, 0)"))
        conn.execute(text("INSERT INTO log_lines (job_id, op_id, attempt_id, seq, stream, text, logged_at) "
                          "VALUES (1, 1, 1, 1, 'stdout', 'hello', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO job_events (job_id, op_id, attempt_id, kind, message, created_at) "
                          "VALUES (1, 1, 1, 'started', 'a: started', '2026-01-01 00:00:00')"))

    upgrade(url)

    with engine.connect() as conn:
        counts = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                  for table in ("attempts", "log_lines", "job_events")}
    engine.dispose()
    assert counts == {"attempts": 1, "log_lines": 1, "job_events": 1}
    store = make_engine(url)
    with store.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # the store's connections still enforce them
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    store.dispose()


def test_a_postgresql_database_not_kept_in_utf8_is_refused_with_how_to_make_one(postgres_admin, tmp_path):
    """Given a SQL_ASCII database (initdb's choice under the C locale), `peergrid db upgrade` says
    what is wrong and how to make a UTF-8 one, rather than failing inside SQLAlchemy."""
    import os
    import subprocess
    import sys
    import uuid

    from sqlalchemy import text

    from tests.conftest import POSTGRES_URL

    name = f"peergrid_ascii_{uuid.uuid4().hex[:8]}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"))
    try:
        url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        done = subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], capture_output=True, text=True,
                              env={**os.environ, "PEERGRID_DATABASE_URL": url, "PEERGRID_DATA_DIR": str(tmp_path)},
                              timeout=120)
        assert done.returncode == 1, done.stderr
        assert f"The database {name} keeps its text as SQL_ASCII" in done.stderr
        assert "createdb --encoding=UTF8" in done.stderr and "Traceback" not in done.stderr
    finally:
        with postgres_admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
