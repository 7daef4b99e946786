"""The embedded SQL broker forgets what it delivered, so its table does not grow with every offer."""

from __future__ import annotations

from kombu import Connection
from sqlalchemy import create_engine, text

from scheduler.upkeep import chores
from scheduler.offers import broker_transport_options, prune_delivered
from scheduler.settings import Settings


def rows(url: str) -> list[tuple[bool, str]]:
    engine = create_engine(url.removeprefix("sqla+"))
    with engine.connect() as conn:
        found = [(bool(v), p) for v, p in conn.execute(text("SELECT visible, payload FROM kombu_message ORDER BY id"))]
    engine.dispose()
    return found


def test_delivered_messages_are_deleted_and_waiting_ones_kept(tmp_path):
    url = f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert prune_delivered(url) == 0  # no table yet: nothing to do, no error
    with Connection(url, transport_options=broker_transport_options(url)) as conn:
        queue = conn.SimpleQueue("market.cpu")
        for i in range(3):
            queue.put({"attempt_id": i})
        for _ in range(2):
            queue.get(timeout=5).ack()
        # Given two delivered and one waiting message
        assert [visible for visible, _ in rows(url)] == [False, False, True]
        # When the broker is pruned
        assert prune_delivered(url) == 2
        # Then only the waiting one is left, and it is still delivered
        assert [visible for visible, _ in rows(url)] == [True]
        assert queue.get(timeout=5).payload == {"attempt_id": 2}
        queue.close()


def test_other_brokers_are_left_alone():
    assert prune_delivered("redis://127.0.0.1:1/0") == 0


def test_the_scheduler_prunes_only_an_sql_broker(tmp_path):
    def schedule(broker: str) -> set[str]:
        settings = Settings.from_env(
            {"PEERGRID_DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite", "PEERGRID_BROKER_URL": broker,
             "PEERGRID_SECRET_KEY": "x"},
            data_dir=tmp_path,
        )
        return {chore.name for chore in chores(settings)}

    assert "prune-broker" in schedule(f"sqla+sqlite:///{tmp_path}/b.sqlite")
    assert "prune-broker" not in schedule("redis://127.0.0.1:6390/0")
