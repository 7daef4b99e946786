import copy
import json
from pathlib import Path

import pytest

from scheduler.errors import InvalidDefinition
from scheduler.jobdef import parse_definition, read_definition

COMPAT = Path(__file__).resolve().parents[2] / "shared" / "compat" / "nosana"
if not COMPAT.is_dir():  # a checkout with shared/ inside it
    COMPAT = Path(__file__).resolve().parents[1] / "shared" / "compat" / "nosana"
EXAMPLES = sorted(COMPAT.glob("*.json"))

HELLO = {
    "version": "0.1",
    "type": "container",
    "ops": [{"type": "container/run", "id": "hello", "args": {"image": "ubuntu", "cmd": ["echo", "hi"]},
             "results": {"port": "port: (\\d+)"}}],
}


def test_the_nosana_examples_are_there():
    assert len(EXAMPLES) >= 15, f"expected the Nosana examples in {COMPAT}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_nosana_example_validates(path):
    definition = parse_definition(json.loads(path.read_text()))
    assert definition.ops


def test_global_defaults_fill_in_ops():
    doc = {
        "version": "0.1",
        "global": {"image": "busybox", "env": {"A": "1"}, "variables": {"X": "y"}},
        "ops": [{"type": "container/run", "id": "a", "args": {"cmd": "echo %%global.variables.X%%", "env": {"B": "2"}}}],
    }
    op = parse_definition(doc).ops[0]
    assert op.image == "busybox"
    assert op.args["env"] == {"A": "1", "B": "2"}


def test_gpu_and_retries_read_as_nosana_means_them():
    doc = copy.deepcopy(HELLO)
    doc["ops"][0]["args"].update({"gpu": True, "required_vram": 24, "restart_policy": {"policy": "on-failure", "restart_tries": 2}})
    op = parse_definition(doc).ops[0]
    assert (op.gpu_count, op.min_vram_mb, op.max_attempts) == (1, 24_000, 3)


def _problems(doc) -> dict[str, str]:
    with pytest.raises(InvalidDefinition) as info:
        parse_definition(doc)
    return {p.path: p.message for p in info.value.problems}


def _with(mutate):
    doc = copy.deepcopy(HELLO)
    mutate(doc)
    return doc


MISTAKES = [
    ("not an object", [], "$"),
    ("no version", _with(lambda d: d.pop("version")), "$.version"),
    ("wrong version", _with(lambda d: d.update(version="2")), "$.version"),
    ("wrong type", _with(lambda d: d.update(type="vm")), "$.type"),
    ("no ops", _with(lambda d: d.pop("ops")), "$.ops"),
    ("empty ops", _with(lambda d: d.update(ops=[])), "$.ops"),
    ("unknown op type", _with(lambda d: d["ops"][0].update(type="container/fly")), "$.ops[0].type"),
    ("no image", _with(lambda d: d["ops"][0]["args"].pop("image")), "$.ops[0].args.image"),
    ("cmd of numbers", _with(lambda d: d["ops"][0]["args"].update(cmd=[1, 2])), "$.ops[0].args.cmd"),
    ("env not an object", _with(lambda d: d["ops"][0]["args"].update(env=["A=1"])), "$.ops[0].args.env"),
    ("gpu not a boolean", _with(lambda d: d["ops"][0]["args"].update(gpu="yes")), "$.ops[0].args.gpu"),
    ("negative vram", _with(lambda d: d["ops"][0]["args"].update(required_vram=-1)), "$.ops[0].args.required_vram"),
    ("zero timeout", _with(lambda d: d["ops"][0]["args"].update(timeout=0)), "$.ops[0].args.timeout"),
    ("depends on a missing op", _with(lambda d: d["ops"][0].update(execution={"depends_on": ["ghost"]})),
     "$.ops[0].execution.depends_on[0]"),
    ("duplicate id", _with(lambda d: d["ops"].append(copy.deepcopy(d["ops"][0]))), "$.ops[1].id"),
    ("bad logType", _with(lambda d: d["ops"][0].update(results={"r": {"regex": "x", "logType": "stdlog"}})),
     "$.ops[0].results.r.logType"),
    ("literal naming an unknown op", _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%ops.ghost.results.x%%")),
     "$.ops[0].args.cmd"),
    ("volume never created", _with(lambda d: d["ops"][0]["args"].update(volumes=[{"name": "v", "dest": "/v"}])),
     "$.ops[0].args.volumes[0].name"),
    ("volume without dest", _with(lambda d: d["ops"][0]["args"].update(volumes=[{"name": "v"}])),
     "$.ops[0].args.volumes[0]"),
    ("op not an object", _with(lambda d: d["ops"].append("run this")), "$.ops[1]"),
    ("args not an object", _with(lambda d: d["ops"][0].update(args=["ubuntu"])), "$.ops[0].args"),
    ("id with spaces", _with(lambda d: d["ops"][0].update(id="my op")), "$.ops[0].id"),
    ("unknown restart policy", _with(lambda d: d["ops"][0]["args"].update(restart_policy="sometimes")),
     "$.ops[0].args.restart_policy"),
    ("negative restart tries", _with(lambda d: d["ops"][0]["args"].update(
        restart_policy={"policy": "on-failure", "restart_tries": -1})), "$.ops[0].args.restart_policy.restart_tries"),
    ("expose of text", _with(lambda d: d["ops"][0]["args"].update(expose="port 80")), "$.ops[0].args.expose"),
    ("result neither regex nor object", _with(lambda d: d["ops"][0].update(results={"r": 5})), "$.ops[0].results.r"),
    ("literal of the wrong shape", _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%ops.hello.port%%")),
     "$.ops[0].args.cmd"),
    ("literal naming an unknown result",
     _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%ops.hello.results.nope%%")), "$.ops[0].args.cmd"),
    ("unknown global", _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%global.weather%%")), "$.ops[0].args.cmd"),
    ("unknown variable", _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%global.variables.X%%")),
     "$.ops[0].args.cmd"),
    ("zero execution timeout", _with(lambda d: d["ops"][0].update(execution={"timeout": 0})), "$.ops[0].execution.timeout"),
    ("group not a string", _with(lambda d: d["ops"][0].update(execution={"group": 3})), "$.ops[0].execution.group"),
    ("depends on itself", _with(lambda d: d["ops"][0].update(execution={"depends_on": ["hello"]})),
     "$.ops[0].execution.depends_on[0]"),
    ("bad vram_total_mb", _with(lambda d: d.update(meta={"system_requirements": {"vram_total_mb": "lots"}})),
     "$.meta.system_requirements.vram_total_mb"),
    ("create-volume without a name", _with(lambda d: d["ops"].append({"type": "container/create-volume", "id": "v", "args": {}})),
     "$.ops[1].args.name"),
    ("market not a string", _with(lambda d: d["ops"][0]["args"].update(market=7)), "$.ops[0].args.market"),
    ("work_dir not a string", _with(lambda d: d["ops"][0]["args"].update(work_dir=["/tmp"])), "$.ops[0].args.work_dir"),
    ("secret in cmd", _with(lambda d: d["ops"][0]["args"].update(cmd="echo %%secrets.TOKEN%%")), "$.ops[0].args.cmd"),
    ("secret of a lower-case name", _with(lambda d: d["ops"][0]["args"].update(env={"T": "%%secrets.token%%"})),
     "$.ops[0].args.env.T"),
    ("registry password written out", _with(lambda d: d["ops"][0]["args"].update(
        authentication={"docker": {"username": "ann", "password": "hunter2"}})),
     "$.ops[0].args.authentication.docker.password"),
    ("registry login without a username", _with(lambda d: d["ops"][0]["args"].update(
        authentication={"docker": {"password": "%%secrets.REGISTRY%%"}})),
     "$.ops[0].args.authentication.docker.username"),
    ("endpoint of an unknown op", _with(lambda d: d["ops"][0]["args"].update(cmd="curl %%ops.ghost.endpoint.80%%")),
     "$.ops[0].args.cmd"),
    ("endpoint of a port not exposed", _with(lambda d: d["ops"][0]["args"].update(
        expose=8080, cmd="curl %%ops.hello.endpoint.80%%")), "$.ops[0].args.cmd"),
    ("endpoint of an op exposing nothing", _with(lambda d: d["ops"][0]["args"].update(
        cmd="curl %%ops.hello.deployment_endpoint%%")), "$.ops[0].args.cmd"),
    ("endpoint without a port", _with(lambda d: d["ops"][0]["args"].update(
        expose=80, cmd="curl %%ops.hello.endpoint%%")), "$.ops[0].args.cmd"),
    ("private not a boolean", _with(lambda d: d["ops"][0]["args"].update(private="yes")), "$.ops[0].args.private"),
    ("alias not a host name", _with(lambda d: d["ops"][0]["args"].update(aliases=["db", "my_db"])),
     "$.ops[0].args.aliases[1]"),
    ("aliases not names", _with(lambda d: d["ops"][0]["args"].update(aliases={"db": 1})), "$.ops[0].args.aliases"),
]


@pytest.mark.parametrize("mutate,path,nearest", [
    (lambda d: d["ops"][0]["args"].update(gpus=True), "$.ops[0].args.gpus", "gpu"),
    (lambda d: d["ops"][0]["args"].update(workdir="/app"), "$.ops[0].args.workdir", "work_dir"),
    (lambda d: d["ops"][0].update(execution={"depend_on": []}), "$.ops[0].execution.depend_on", "depends_on"),
    (lambda d: d["ops"][0].update(result={}), "$.ops[0].result", "results"),
    (lambda d: d.update(verison="0.1"), "$.verison", "version"),
    (lambda d: d.update({"global": {"gpu": True, "imag": "x"}}), "$.global.imag", "image"),
    (lambda d: d["ops"][0]["args"].update(restart_policy={"policy": "on-failure", "retry_tries": 2}),
     "$.ops[0].args.restart_policy.retry_tries", "restart_tries"),
    (lambda d: d["ops"][0]["args"].update(volumes=[{"name": "v", "dest": "/v", "mode": "ro"}]),
     "$.ops[0].args.volumes[0].mode", None),
    (lambda d: d["ops"][0]["args"].update(authentication={"docker": {"user": "ann"}}),
     "$.ops[0].args.authentication.docker.user", None),
    (lambda d: d["ops"][0].update(results={"r": {"regex": "x", "log_type": ["stdout"]}}),
     "$.ops[0].results.r.log_type", "logType"),
    (lambda d: d["ops"].append({"type": "container/create-volume", "id": "v", "args": {"name": "v", "size": 1}}),
     "$.ops[1].args.size", None),
])
def test_an_unknown_field_is_refused_at_its_path_with_the_nearest_known_name(mutate, path, nearest):
    problems = _problems(_with(mutate))
    assert path in problems, problems
    if nearest:
        assert f"did you mean {nearest!r}" in problems[path]
    assert problems[path].endswith(".")


def test_a_misspelt_gpu_no_longer_makes_a_gpu_job_a_cpu_job():
    with pytest.raises(InvalidDefinition):
        parse_definition(_with(lambda d: d["ops"][0]["args"].update(gpus=True)))


def test_our_documented_extensions_are_accepted():
    doc = _with(lambda d: d["ops"][0]["args"].update(gpu_count=2, market="h100", timeout=60, retries=1))
    doc["ops"][0]["execution"] = {"timeout": 30}
    doc["meta"] = {"trigger": "cli", "anything": {"goes": "here"}, "system_requirements": {"required_cuda": ["12.2"]}}
    doc["deployment_id"] = "d-1"
    assert parse_definition(doc).ops[0].gpu_count == 2


def test_private_aliases_and_restart_policies_are_read():
    def services(d):
        d["ops"][0]["args"].update(private=True, aliases=["db", "db.local"], restart_policy="unless-stopped", expose=5432)
        d["ops"].append({"type": "container/run", "id": "b", "args": {
            "image": "x", "aliases": "%%ops.hello.results.port%%", "restart_policy": {"policy": "always"}}})
    a, b = parse_definition(_with(services)).ops
    assert (a.private, a.aliases, a.restart_policy) == (True, ("db", "db.local"), "unless-stopped")
    assert (b.private, b.aliases, b.restart_policy) == (False, ("%%ops.hello.results.port%%",), "always")
    for name in ("always", "unless-stopped", "on-failure", "no"):
        assert parse_definition(_with(lambda d: d["ops"][0]["args"].update(restart_policy=name))).ops[0].restart_policy == name


def test_a_wrong_op_still_counts_for_duplicate_ids_and_dependencies():
    doc = _with(lambda d: d["ops"].extend([
        {"type": "container/run", "id": "broken", "args": {"cmd": 5}},
        {"type": "container/run", "id": "broken", "args": {"image": "x"}},
        {"type": "container/run", "id": "after", "args": {"image": "x"}, "execution": {"depends_on": ["broken", "ghost"]}},
    ]))
    problems = _problems(doc)
    assert "Duplicate op id" in problems["$.ops[2].id"]
    assert "$.ops[3].execution.depends_on[0]" not in problems  # broken is an op, only a wrong one
    assert "not an op of this job" in problems["$.ops[3].execution.depends_on[1]"]
    assert {"$.ops[1].args.image", "$.ops[1].args.cmd"} <= set(problems)


def test_twenty_and_more_distinct_mistakes_are_covered():
    assert len({m[0] for m in MISTAKES}) >= 20


def test_depending_on_an_op_of_a_later_group_is_refused():
    doc = _with(lambda d: d["ops"].extend([
        {"type": "container/run", "id": "early", "args": {"image": "x"}, "execution": {"group": "a", "depends_on": ["late"]}},
        {"type": "container/run", "id": "late", "args": {"image": "x"}, "execution": {"group": "b"}},
    ]))
    problems = _problems(doc)
    assert "later group" in problems["$.ops[1].execution.depends_on[0]"]


def test_a_regex_that_does_not_compile_is_a_warning_as_in_nosana():
    doc = _with(lambda d: d["ops"][0].update(results={"bad": "\\"}))
    definition = parse_definition(doc)
    assert [w.path for w in definition.warnings] == ["$.ops[0].results.bad"]


@pytest.mark.parametrize("name,doc,path", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_reported_at_its_path(name, doc, path):
    problems = _problems(doc)
    assert path in problems, problems
    assert problems[path].endswith(".")


def test_all_problems_come_back_at_once():
    doc = {
        "version": "9",
        "ops": [
            {"type": "container/run", "id": "a", "args": {"cmd": 5}},
            {"type": "nope", "id": "a", "args": {"image": "x"}},
            {"type": "container/run", "id": "b", "args": {"image": "x"}, "execution": {"depends_on": ["c"]}},
            {"type": "container/run", "id": "c", "args": {"image": "x"}, "execution": {"depends_on": ["b"]}},
        ],
    }
    problems = _problems(doc)
    assert {"$.version", "$.ops[0].args.image", "$.ops[0].args.cmd", "$.ops[1].type"} <= set(problems)
    assert any("circle" in m for m in problems.values())


def test_secrets_are_named_in_env_and_the_registry_login_only():
    doc = _with(lambda d: d["ops"][0]["args"].update(
        env={"TOKEN": "%%secrets.TOKEN%%", "HEADER": "Bearer %%secrets.TOKEN%%"},
        authentication={"docker": {"username": "%%secrets.REGISTRY_USER%%", "password": "%%secrets.REGISTRY%%",
                                   "server": "registry.example.com"}}))
    doc["global"] = {"env": {"SHARED": "%%secrets.SHARED%%"}}
    op = parse_definition(doc).ops[0]
    assert op.args["env"]["SHARED"] == "%%secrets.SHARED%%"
    problems = _problems(_with(lambda d: d["ops"][0]["args"].update(cmd="echo %%secrets.TOKEN%%")))
    assert "only in env values and in authentication.docker" in problems["$.ops[0].args.cmd"]
    password = _problems(_with(lambda d: d["ops"][0]["args"].update(
        authentication={"docker": {"username": "ann", "password": "hunter2"}})))
    assert "`peergrid secret set NAME`" in password["$.ops[0].args.authentication.docker.password"]


def test_endpoint_and_host_literals_name_ops_and_their_exposed_ports():
    doc = _with(lambda d: d["ops"].append({
        "type": "container/run", "id": "client",
        "args": {"image": "x", "cmd": ["curl", "%%ops.hello.endpoint.8080%%", "%%ops.hello.deployment_endpoint%%",
                                       "%%ops.hello.host%%"]}}))
    doc["ops"][0]["args"]["expose"] = [{"port": 8080, "type": "web"}, 9000]
    assert [op.key for op in parse_definition(doc).ops] == ["hello", "client"]
    problems = _problems(_with(lambda d: d["ops"][0]["args"].update(expose=8080, cmd="curl %%ops.hello.endpoint.80%%")))
    assert "does not expose (it exposes 8080)" in problems["$.ops[0].args.cmd"]


def test_an_empty_registry_login_means_none():
    doc = _with(lambda d: d["ops"][0]["args"].update(authentication={"docker": {"username": "", "password": ""}}))
    op = parse_definition(doc).ops[0]
    from worker.runtime import registry_auth
    assert registry_auth(op.args) is None
    half = _problems(_with(lambda d: d["ops"][0]["args"].update(
        authentication={"docker": {"username": "ann", "password": ""}})))
    assert "registry password" in half["$.ops[0].args.authentication.docker.password"]


NUL_PLACES = [
    ("image", lambda a: a.update(image="ubuntu\x00:24.04"), "$.ops[0].args.image"),
    ("cmd as a string", lambda a: a.update(cmd="echo a\x00b"), "$.ops[0].args.cmd"),
    ("cmd as a list", lambda a: a.update(cmd=["echo", "a\x00b"]), "$.ops[0].args.cmd[1]"),
    ("entrypoint", lambda a: a.update(entrypoint=["/bin/sh\x00"]), "$.ops[0].args.entrypoint[0]"),
    ("env value", lambda a: a.update(env={"A": "x\x00y"}), "$.ops[0].args.env.A"),
    ("env name", lambda a: a.update(env={"A\x00B": "x"}), "$.ops[0].args.env"),
    ("work_dir", lambda a: a.update(work_dir="/tmp\x00"), "$.ops[0].args.work_dir"),
]


@pytest.mark.parametrize("mutate,path", [p[1:] for p in NUL_PLACES], ids=[p[0] for p in NUL_PLACES])
def test_a_nul_that_would_reach_the_container_is_refused_at_its_path(mutate, path):
    problems = _problems(_with(lambda d: mutate(d["ops"][0]["args"])))
    assert path in problems, problems
    assert "NUL" in problems[path]


def test_a_nul_in_the_global_defaults_is_refused_there():
    doc = _with(lambda d: d.update({"global": {"env": {"A": "\x00"}}}))
    assert "NUL" in _problems(doc)["$.global.env.A"]


@pytest.mark.parametrize("key", ["a\n", "a\r\n", "\na", "my op", "tab\tbed", "nul\x00", "bell\x07", "x" * 201, ""])
def test_an_op_id_with_whitespace_or_a_control_character_is_refused(key):
    problems = _problems(_with(lambda d: d["ops"][0].update(id=key)))
    assert "$.ops[0].id" in problems, problems


@pytest.mark.parametrize("key", ["gpt-oss:120b", "meta-llama/Llama-3.1-8B", "_private", "-dash", "ünïcode", "x" * 200])
def test_an_op_id_is_any_text_without_whitespace_as_in_nosana(key):
    assert [op.key for op in parse_definition(_with(lambda d: d["ops"][0].update(id=key))).ops] == [key]


def test_a_results_literal_can_name_an_op_whose_id_has_a_colon():
    doc = _with(lambda d: d["ops"][0].update(id="gpt-oss:120b"))
    doc["ops"].append({"type": "container/run", "id": "client", "args": {
        "image": "x", "cmd": "echo %%ops.gpt-oss:120b.results.port%% %%ops.gpt-oss:120b.host%%"}})
    assert [op.key for op in parse_definition(doc).ops] == ["gpt-oss:120b", "client"]
    problems = _problems(_with(lambda d: d["ops"][0]["args"].update(cmd="echo %%ops.gpt-oss:120b.results.port%%")))
    assert "not an op of this job" in problems["$.ops[0].args.cmd"]


REFUSED = sorted((COMPAT.parent / "nosana-refused").glob("*.json"))


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.name)
def test_every_refused_nosana_example_is_refused_with_a_sentence_saying_what_to_do(path):
    problems = _problems(json.loads(path.read_text()))
    message = " ".join(problems.values())
    if path.name.startswith("confidential"):
        assert "peergrid needs the full definition" in problems["$.ops"]
    else:
        assert '"0.1"' in problems["$.version"]
    assert message.endswith(".")


def test_the_refused_examples_are_there():
    assert len(REFUSED) == 3


@pytest.mark.parametrize("op_type, args, said", [
    ("container/create-volume", {"name": "x", "volumes": 1.5}, "Unknown field 'volumes'"),
    ("container/run", {"image": "busybox", "volumes": 1.5}, "volumes must be a list"),
])
def test_volumes_that_are_not_a_list_are_a_problem_at_their_path_not_a_crash(op_type, args, said):
    doc = {"version": "0.1", "type": "container", "ops": [{"type": op_type, "id": "v", "args": args}]}

    _, problems = read_definition(doc)

    assert [(p.path, said in p.message) for p in problems] == [("$.ops[0].args.volumes", True)], problems
