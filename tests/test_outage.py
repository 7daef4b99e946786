"""When the store cannot be reached, the API and the dashboard answer 503 with Retry-After."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import make_url

from tests import factories
from tests.factories import PASSWORD, bearer, hello_world
from tests.proxy import TcpProxy
from tests.stack import free_port


def csrf(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def assert_unavailable(response, *, page: bool = False):
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.headers["Retry-After"] == "5"
    text = response.get_data(as_text=True)
    if page:
        assert response.mimetype == "text/html" and "cannot be reached" in text
    else:
        assert "cannot be reached" in response.json["error"] and "try again" in response.json["error"]


def test_a_postgresql_nothing_listens_for_is_a_503(tmp_path):
    url = f"postgresql+psycopg://peergrid:peergrid@127.0.0.1:{free_port()}/peergrid"
    with factories.served(url, tmp_path) as (core, client):
        assert_unavailable(client.get("/api/v1/jobs", headers=bearer("pg_whatever")))
        assert_unavailable(client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer("pg_whatever")))
        login = client.get("/login")
        assert login.status_code == 200
        assert_unavailable(client.post("/login", data={"email": "a@example.com", "password": PASSWORD,
                                                       "csrf_token": csrf(login)}), page=True)


def test_a_sqlite_store_that_cannot_be_opened_is_a_503(tmp_path):
    store = tmp_path / "store.sqlite"
    store.mkdir()  # a folder where the file should be: SQLite cannot open it
    with factories.served(f"sqlite:///{store}", tmp_path) as (core, client):
        assert_unavailable(client.get("/api/v1/jobs", headers=bearer("pg_whatever")))


def test_a_postgresql_that_becomes_unreachable_is_a_503_until_it_is_back(postgres_url, tmp_path):
    real = make_url(postgres_url)
    with TcpProxy((real.host, real.port)) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with factories.served(url, tmp_path) as (core, client):
            factories.user(core, email="ann@example.com")
            _, token = factories.user(core)
            client.post("/login", data={"email": "ann@example.com", "password": PASSWORD,
                                        "csrf_token": csrf(client.get("/login"))})
            assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
            assert client.get("/jobs").status_code == 200

            # When: the network to the store goes down under open connections.
            proxy.cut()

            assert_unavailable(client.get("/api/v1/jobs", headers=bearer(token)))
            assert_unavailable(client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)))
            assert_unavailable(client.get("/jobs"), page=True)

            # Then: once it is back, the same app answers again.
            proxy.restore()
            assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
            assert client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).status_code == 201
            assert client.get("/jobs").status_code == 200
