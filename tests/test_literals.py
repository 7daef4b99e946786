"""Results extraction and literal resolution, as Nosana does them."""

import pytest

from scheduler.literals import Scope, UnresolvedLiteral, resolve_args
from scheduler.results import extract

LINES = [
    ("stdout", "cmd: --model"),
    ("stdout", "cmd: tiny"),
    ("stderr", "Device 0: GPU"),
    ("stdout", "env: {\"A\": \"1\", \"B\": \"2\"}"),
    ("system", "[peergrid] node says hi"),
]


def test_results_collect_every_matching_line_with_its_groups():
    rules = {
        "cmd": {"regex": "(?<=cmd: ).*", "log_types": ["all"]},
        "device": {"regex": r"Device (?<n>\d)", "log_types": ["stderr"]},
        "nothing": {"regex": "zzz", "log_types": ["all"]},
        "only_stdout": {"regex": "Device", "log_types": ["stdout"]},
        "node": {"regex": "node says (\\w+)", "log_types": ["nodeerr"]},
    }
    found = extract(rules, LINES)
    assert found["cmd"] == ["--model", "tiny"]
    assert found["device"] == ["Device 0", "0"]
    assert found["nothing"] == [] and found["only_stdout"] == []
    assert found["node"] == ["node says hi", "hi"]


def test_a_regex_that_does_not_compile_yields_its_error():
    found = extract({"bad": {"regex": "\\", "log_types": ["all"]}}, LINES)
    assert isinstance(found["bad"], str) and "Invalid regular expression" in found["bad"]
    assert extract({"bad": {"regex": "\\", "log_types": ["all"]}}, []) == {"bad": []}


SCOPE = Scope(
    job_id=7,
    results={"setter": {"cmd": ["--model", "tiny"], "one": ["x"], "env_json": ['{"A": "1", "B": 2}'], "empty": []}},
    hosts={"setter": "peergrid-job-7-0"},
    variables={"MODEL": "m-1"},
)


def test_a_whole_literal_in_a_list_is_flattened_into_it():
    args = {"cmd": ["serve", "%%ops.setter.results.cmd%%", "--x"]}
    assert resolve_args(args, SCOPE)["cmd"] == ["serve", "--model", "tiny", "--x"]


def test_a_whole_literal_in_a_string_field_takes_one_value_or_joins_them():
    assert resolve_args({"image": "%%ops.setter.results.one%%"}, SCOPE)["image"] == "x"
    assert resolve_args({"work_dir": "%%ops.setter.results.cmd%%"}, SCOPE)["work_dir"] == "--model tiny"
    assert resolve_args({"work_dir": "%%ops.setter.results.empty%%"}, SCOPE)["work_dir"] == ""


def test_literals_inside_strings_and_globals():
    args = {"cmd": "run %%global.variables.MODEL%% on %%global.host%% (%%ops.setter.host%%) job %%global.job%%"}
    assert resolve_args(args, SCOPE)["cmd"] == "run m-1 on peergrid-job-7 (peergrid-job-7-0) job 7"


def test_spread_merges_objects_and_splices_lists_and_env_becomes_strings():
    args = {
        "env": {"KEEP": "k", "__spread__": "%%ops.setter.results.env_json%%", "A": "overwritten"},
        "expose": [1000, {"__spread__": "[2000, 3000]"}],
    }
    resolved = resolve_args(args, SCOPE)
    assert resolved["env"] == {"KEEP": "k", "A": "1", "B": "2"}
    assert resolved["expose"] == [1000, 2000, 3000]
    assert all(isinstance(v, str) for v in resolved["env"].values())


def test_remove_if_empty_drops_an_arg_left_empty():
    args = {"entrypoint": ["__remove-if-empty__", "%%ops.setter.results.empty%%"], "cmd": ["__remove-if-empty__", "a"]}
    resolved = resolve_args(args, SCOPE)
    assert "entrypoint" not in resolved
    assert resolved["cmd"] == ["a"]


@pytest.mark.parametrize("literal", ["%%ops.setter.results.missing%%", "%%ops.ghost.results.x%%",
                                     "%%global.variables.NOPE%%", "%%global.nothing%%"])
def test_a_literal_without_a_value_is_unresolved(literal):
    with pytest.raises(UnresolvedLiteral, match="Unresolved literal"):
        resolve_args({"cmd": ["echo", literal]}, SCOPE)


def test_spreading_what_is_not_json_fails_with_a_sentence():
    with pytest.raises(UnresolvedLiteral, match="needs JSON"):
        resolve_args({"env": {"__spread__": "not json"}}, SCOPE)
