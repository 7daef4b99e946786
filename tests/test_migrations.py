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
