"""Fixtures: real stores (SQLite, PostgreSQL), a real Docker engine and test image, the app."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from scheduler.core import Core
from scheduler.migrate import upgrade
from scheduler.settings import Settings

IN_CI = os.environ.get("CI") == "true"
TEST_IMAGE = os.environ.get("PEERGRID_TEST_IMAGE", "peergrid-test/busybox:latest")
REDIS_URL = os.environ.get("PEERGRID_TEST_REDIS_URL", "redis://127.0.0.1:6390/0")
POSTGRES_URL = os.environ.get(
    "PEERGRID_TEST_POSTGRES_URL", "postgresql+psycopg://peergrid:peergrid@127.0.0.1:5432/postgres"
)


def need(available: bool, what: str) -> None:
    """Skip on a developer's machine without the service; fail in CI, where it must be there."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available (scripts/test sets it up).")
    pytest.skip(f"{what} is not available; scripts/test sets it up")


# -- Docker --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception:
        client = None
    need(client is not None, "A Docker engine")
    return client


@pytest.fixture(scope="session")
def test_image(docker_client) -> str:
    from docker.errors import ImageNotFound

    try:
        docker_client.images.get(TEST_IMAGE)
        found = True
    except ImageNotFound:
        found = False
    need(found, f"The test image {TEST_IMAGE}")
    return TEST_IMAGE


WEBSOCKETD_IMAGE = os.environ.get("PEERGRID_TEST_WEBSOCKETD_IMAGE", "peergrid-test/websocketd:latest")


@pytest.fixture(scope="session")
def websocketd_image(docker_client) -> str:
    """The busybox test image with Debian's websocketd in it; its command serves /bin/cat on port 8080."""
    from docker.errors import ImageNotFound

    try:
        docker_client.images.get(WEBSOCKETD_IMAGE)
        found = True
    except ImageNotFound:
        found = False
    need(found, f"The test image {WEBSOCKETD_IMAGE}")
    return WEBSOCKETD_IMAGE


# -- browser -------------------------------------------------------------------------------

CHROMIUM = os.environ.get("PEERGRID_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    need(Path(CHROMIUM).exists(), f"Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Python playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# -- stores --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "store.sqlite"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    path = tmp_path / "store.sqlite"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_admin():
    try:
        engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        engine = None
    need(engine is not None, f"PostgreSQL at {POSTGRES_URL}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin) -> str:
    name = f"peergrid_tmpl_{os.getpid()}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade(_with_database(POSTGRES_URL, name))
    yield name
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(postgres_admin, postgres_template) -> str:
    name = f"peergrid_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield _with_database(POSTGRES_URL, name)
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str:
    """A migrated, empty store; tests using it run on both backends."""
    return request.getfixturevalue(f"{request.param}_url")


def _redis_database_url(number: int) -> str:
    return REDIS_URL.rsplit("/", 1)[0] + f"/{number}"


@pytest.fixture(scope="session")
def redis_database():
    """A Redis database of this test run's own, so that two runs on one Redis (CI's second pytest,
    or a developer's) never flush or take each other's messages: the first of 1 to 15 that no live
    run holds (but 13, tests/test_broker_rights.py's own)."""
    import redis

    try:
        base = redis.Redis.from_url(REDIS_URL)
        base.ping()
    except Exception:
        base = None
    need(base is not None, f"Redis at {REDIS_URL}")
    for number in (n for n in range(1, 16) if n != 13):
        # The number in the URL's path, not db=: a path wins over the keyword in redis-py.
        client = redis.Redis.from_url(_redis_database_url(number))
        if client.set("peergrid-test:held-by", os.getpid(), nx=True, ex=6 * 3600):
            break
    else:
        pytest.fail(f"every database of the Redis at {REDIS_URL} is held by another test run")
    yield number, client
    client.flushdb()


@pytest.fixture
def redis_url(redis_database):
    number, client = redis_database
    client.flushdb()
    client.set("peergrid-test:held-by", os.getpid(), ex=6 * 3600)
    yield _redis_database_url(number)
    client.flushdb()
    client.set("peergrid-test:held-by", os.getpid(), ex=6 * 3600)


# -- the app -------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path, sqlite_url) -> Settings:
    return Settings.from_env(
        {
            "PEERGRID_DATABASE_URL": sqlite_url,
            "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
            "PEERGRID_SECRET_KEY": "test-secret",
        },
        data_dir=tmp_path,
    )


@pytest.fixture
def core(settings):
    core = Core.from_settings(settings)
    yield core
    core.close()


@pytest.fixture
def store_core(database_url, tmp_path):
    """A core on each store: SQLite, then PostgreSQL."""
    core = Core.from_settings(Settings.from_env(
        {"PEERGRID_DATABASE_URL": database_url, "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.sqlite",
         "PEERGRID_SECRET_KEY": "x"}, data_dir=tmp_path))
    yield core
    core.close()


@pytest.fixture
def app(core):
    from web import create_app

    app = create_app(core=core)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)

