import copy
import json
from pathlib import Path

import pytest

from scheduler.errors import InvalidDefinition
from scheduler.jobdef import parse_definition

COMPAT = Path(__file__).resolve().parents[2] / "shared" / "compat" / "nosana"
if not COMPAT.is_dir():  # a checkout with shared/ inside it
    COMPAT = Path(__file__).resolve().parents[1] / "shared" / "compat" / "nosana"
EXAMPLES = sorted(COMPAT.glob("*.json"))

HELLO = {
    "version": "0.1",
    "type": "container",
    "ops": [{"type": "container/run", "id": "hello", "args": {"image": "ubuntu", "cmd": ["echo", "hi"]}}],
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
    assert (op.gpu_count, op.min_vram_mb, op.max_attempts) == (1, 24 * 1024, 3)


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
]


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
