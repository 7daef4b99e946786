"""The OpenAPI description is valid and complete, and schemathesis finds no server error."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from tests import factories
from web import create_app
from web.api.openapi import spec


def test_the_description_is_valid_openapi():
    validate(spec())


def test_every_api_route_is_described(app):
    described = {("/api/v1" + path, method.upper()) for path, ops in spec()["paths"].items() for method in ops}
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule.endswith(("openapi.json", ".csv")):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method))
    missing = {r for r in routes if r not in described and "/node/attempts/{attempt_id}/artifact" not in r[0]
               and "/inputs/" not in r[0]}
    assert not missing, sorted(missing)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, sqlite_template):
    from scheduler.core import Core
    from scheduler.settings import Settings

    root = tmp_path_factory.mktemp("fuzz")
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    core = Core.from_settings(Settings.from_env(
        {"PEERGRID_DATABASE_URL": f"sqlite:///{db}", "PEERGRID_BROKER_URL": f"sqla+sqlite:///{root / 'b.sqlite'}",
         "PEERGRID_SECRET_KEY": "x"}, data_dir=root))
    app = create_app(core=core)
    _, token = factories.user(core, admin=True)
    _, node_token, _ = factories.node(core)
    app.config["FUZZ_TOKENS"] = {"apiToken": token, "nodeToken": node_token, "joinToken": factories.join_token(core)}
    yield app
    core.close()


def test_no_input_makes_a_server_error(fuzz_app):
    """Every described operation, fed generated input by schemathesis, answers below 500."""
    from hypothesis import given

    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        scheme = next(iter((operation.definition.raw.get("security") or [{"apiToken": []}])[0]), "apiToken")
        headers = {"Authorization": f"Bearer {fuzz_app.config['FUZZ_TOKENS'][scheme]}"}

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_below_500(case):
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:300])

        answers_below_500()
        seen += 1
    assert seen >= 30
