"""Random and mutated definitions: never a crash, always a job or a list of problems."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import InvalidDefinition
from scheduler.jobdef import JobDefinition, parse_definition
from tests import factories
from tests.factories import bearer
from tests.test_jobdef import EXAMPLES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["version", "type", "ops", "id", "args", "image", "cmd", "env", "execution", "depends_on", "group",
        "results", "volumes", "gpu", "required_vram", "timeout", "retries", "output", "regex", "logType",
        "global", "variables", "meta", "system_requirements", "restart_policy", "name", "dest", "expose"]
EXAMPLE_DOCS = [json.loads(p.read_text()) for p in EXAMPLES]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(json_values)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


def _check(doc) -> None:
    try:
        definition = parse_definition(doc)
    except InvalidDefinition as e:
        assert e.problems
        for problem in e.problems:
            assert problem.path.startswith("$")
            assert problem.message and problem.message.endswith(".")
    else:
        assert isinstance(definition, JobDefinition) and definition.ops


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_never_crashes(doc):
    _check(doc)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_examples_never_crash(doc):
    _check(doc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated())
def test_the_api_answers_201_or_422_never_a_server_error(client, core, doc):
    if not hasattr(core, "_token"):
        core._token = factories.user(core)[1]
    response = client.post("/api/v1/jobs", json=doc, headers=bearer(core._token))
    assert response.status_code in (201, 422), response.json
    if response.status_code == 422:
        assert response.json["errors"]


def test_the_api_gives_the_same_problems_as_validation(client, core):
    _, token = factories.user(core)
    bad = {"version": "0.2", "ops": [{"id": "a a", "type": "container/run", "args": {"image": 3, "env": []}}]}
    with pytest.raises(InvalidDefinition) as info:
        parse_definition(bad)
    response = client.post("/api/v1/jobs", json=bad, headers=bearer(token))
    assert response.json["errors"] == [p.as_dict() for p in info.value.problems]
    assert client.get("/api/v1/jobs", headers=bearer(token)).json["total"] == 0
