"""Every form of `expose` Nosana defines, read into ports with their service type and health checks."""

import copy

import pytest

from scheduler.errors import InvalidDefinition
from scheduler.expose import ExposedPort, HealthCheck
from scheduler.jobdef import exposed_ports, parse_definition

SERVER = {
    "version": "0.1",
    "type": "container",
    "ops": [{"type": "container/run", "id": "server", "args": {"image": "nginx"},
             "results": {"ports": "ports: (.*)"}}],
}


def _op(expose):
    doc = copy.deepcopy(SERVER)
    doc["ops"][0]["args"]["expose"] = expose
    return parse_definition(doc).ops[0]


def _problems(expose) -> dict[str, str]:
    with pytest.raises(InvalidDefinition) as info:
        _op(expose)
    return {p.path: p.message for p in info.value.problems}


def test_a_port_number():
    assert _op(8080).exposed == (ExposedPort(port=8080, last=8080),)


def test_a_list_of_ports_and_port_objects_of_every_service_type():
    op = _op([80, *({"port": 9000 + i, "type": t} for i, t in enumerate(("web", "api", "webapi", "websocket", "none")))])
    assert [(p.port, p.type) for p in op.exposed] == [
        (80, "api"), (9000, "web"), (9001, "api"), (9002, "webapi"), (9003, "websocket"), (9004, "none")]


def test_a_port_range_of_the_older_sdk_exposes_each_port_in_it():
    op = _op("8000-8002")
    assert list(op.exposed[0].ports) == [8000, 8001, 8002]
    assert exposed_ports("8000-8002") == frozenset({8000, 8001, 8002})
    assert _op([{"port": "9000-9001", "type": "web"}, 80]).exposure.numbers() == frozenset({80, 9000, 9001})


@pytest.mark.parametrize("expose", [
    "%%ops.server.results.ports%%",
    ["%%ops.server.results.ports%%", 80],
    [80, {"__spread__": "%%ops.server.results.ports%%"}],
])
def test_a_literal_leaves_the_ports_to_when_it_resolves(expose):
    assert _op(expose).exposure.numbers() is None
    assert exposed_ports(expose) is None


def test_health_checks_are_read_with_nosana_fields():
    op = _op([{"port": 8000, "type": "api", "health_checks": [
        {"type": "http", "path": "/health", "method": "POST", "expected_status": 204,
         "headers": {"Authorization": "Bearer x"}, "body": {"ping": 1}, "continuous": True},
        {"type": "http", "path": "/", "expected_status": 200, "expected_response": "It works"},
        {"type": "websocket", "expected_response": "pong", "continuous": False},
    ]}])
    assert op.exposed[0].health_checks == (
        HealthCheck(type="http", continuous=True, path="/health", method="POST", expected_status=204,
                    headers=(("Authorization", "Bearer x"),), body={"ping": 1}),
        HealthCheck(type="http", path="/", expected_status=200, expected_response="It works"),
        HealthCheck(type="websocket", expected_response="pong"),
    )


@pytest.mark.parametrize("expose,path,words", [
    (0, "$.ops[0].args.expose", "1 to 65535"),
    (70000, "$.ops[0].args.expose", "1 to 65535"),
    ("8010-8000", "$.ops[0].args.expose", "lower port"),
    ("eighty", "$.ops[0].args.expose", "not a port"),
    (True, "$.ops[0].args.expose", "port number"),
    ([80, 80], "$.ops[0].args.expose", "twice"),
    (["8000-8010", 8005], "$.ops[0].args.expose", "overlaps ports 8000-8010"),
    ([{"type": "web"}], "$.ops[0].args.expose[0].port", "Missing"),
    ([{"port": 80, "type": "grpc"}], "$.ops[0].args.expose[0].type", "webapi"),
    ([{"port": 80, "kind": "web"}], "$.ops[0].args.expose[0].kind", "Unknown field"),
    ([{"port": 80, "health_checks": {"type": "http"}}], "$.ops[0].args.expose[0].health_checks", "list"),
    ([{"port": 80, "health_checks": [{"type": "tcp"}]}], "$.ops[0].args.expose[0].health_checks[0].type", "http or websocket"),
    ([{"port": 80, "health_checks": [{"type": "http", "path": "/"}]}],
     "$.ops[0].args.expose[0].health_checks[0].expected_status", "Missing"),
    ([{"port": 80, "health_checks": [{"type": "http", "method": "PATCH", "expected_status": 200}]}],
     "$.ops[0].args.expose[0].health_checks[0].method", "GET"),
    ([{"port": 80, "health_checks": [{"type": "http", "expected_code": 200, "expected_status": 200}]}],
     "$.ops[0].args.expose[0].health_checks[0].expected_code", "'expected_status'"),
    ([{"port": 80, "health_checks": [{"type": "http", "expected_status": 200, "expected_response": 200}]}],
     "$.ops[0].args.expose[0].health_checks[0].expected_response", "text"),
    ([{"port": 80, "health_checks": [{"type": "http", "expected_status": 200, "continuous": "yes"}]}],
     "$.ops[0].args.expose[0].health_checks[0].continuous", "true or false"),
    ([{"port": 80, "health_checks": [{"type": "websocket"}]}],
     "$.ops[0].args.expose[0].health_checks[0].expected_response", "Missing"),
    ([{"port": 80, "health_checks": [{"type": "websocket", "expected_response": "ok", "path": "/"}]}],
     "$.ops[0].args.expose[0].health_checks[0].path", "Unknown field"),
])
def test_a_wrong_expose_is_refused_at_its_path(expose, path, words):
    problems = _problems(expose)
    assert path in problems, problems
    assert words in problems[path] and problems[path].endswith(".")
