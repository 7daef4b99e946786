"""The server's own outages lose no running work: a web or PostgreSQL outage of 60 s, with the
default node timeout (30 s), while an op runs."""

from __future__ import annotations

import shutil
import time

import pytest

from scheduler.ledger import check_books
from tests import factories
from tests.factories import hello_world
from tests.outages import PrivatePostgres, wait_until
from tests.stack import Api, Stack

OUTAGE_S = 60


def _running(api: Api, job_id: int) -> bool:
    return api.get(f"/jobs/{job_id}")["ops"][0]["state"] == "running"


@pytest.mark.docker
def test_a_60_s_outage_of_the_web_or_the_store_loses_no_running_work(tmp_path, sqlite_template, test_image,
                                                                      docker_client):
    pg = PrivatePostgres()
    pg.start()
    store = tmp_path / "web-outage.sqlite"
    shutil.copy(sqlite_template, store)
    for folder in ("web", "store"):
        (tmp_path / folder).mkdir()
    try:
        with (
            Stack(tmp_path / "web", database_url=f"sqlite:///{store}",
                  broker_url=f"sqla+sqlite:///{tmp_path / 'web-broker.sqlite'}") as web_down,
            Stack(tmp_path / "store", database_url=pg.url,
                  broker_url=f"sqla+sqlite:///{tmp_path / 'store-broker.sqlite'}") as store_down,
        ):
            assert web_down.settings.node_timeout_s == store_down.settings.node_timeout_s == 30  # the default
            factories.node(store_down.core, name="spare")  # the two stacks' working nodes get different ids
            apis = {"web": web_down.start_with_node("rig-a"), "store": store_down.start_with_node("rig-b")}
            # Given an op on each that runs well past the outage
            work = ["sh", "-c", f"sleep {OUTAGE_S + 25}; echo survived"]
            jobs = {name: api.post("/jobs", hello_world(test_image, work)).json()["id"] for name, api in apis.items()}
            for name, api in apis.items():
                wait_until(lambda: _running(api, jobs[name]), 60, f"the {name} stack's op did not start")

            # When the one stack's web and the other's PostgreSQL are gone for 60 s
            web_down.kill("web")
            pg.stop()
            time.sleep(OUTAGE_S)
            pg.start()
            web_down.start_web()

            # Then each op's one attempt succeeds, billed once, and the books balance
            for name, api in apis.items():
                stack = web_down if name == "web" else store_down
                body = api.wait(jobs[name], timeout=90)
                assert body["state"] == "succeeded", stack.logs()
                attempts = body["ops"][0]["attempts"]
                assert [a["state"] for a in attempts] == ["succeeded"], (name, attempts)
                assert attempts[0]["cost"] > 0
                with stack.core.transaction() as session:
                    books = check_books(session)
                assert books.balanced, books.problems
    finally:
        pg.close()
