"""The "did you mean …?" hint: the known name a misspelt field most likely meant."""

from __future__ import annotations

import pytest

from scheduler.nearest import likeness, nearest, words

HTTP_CHECK = ("type", "path", "method", "expected_status", "expected_response", "headers", "body", "continuous")


def test_a_name_is_read_as_words_whatever_its_case():
    assert words("expected_status") == ["expected", "status"]
    assert words("workDir") == ["work", "dir"]
    assert words("logType") == ["log", "type"]
    assert words("restart-tries") == ["restart", "tries"]


def test_a_word_that_means_the_same_beats_one_that_only_looks_alike():
    # expected_response is nearer letter by letter, expected_status says the same thing
    assert likeness("expected_code", "expected_response") > 0.7
    assert nearest("expected_code", HTTP_CHECK) == "expected_status"


@pytest.mark.parametrize("typo,meant", [
    ("expected_stauts", "expected_status"),
    ("expected_respone", "expected_response"),
    ("heders", "headers"),
    ("continous", "continuous"),
    ("metod", "method"),
])
def test_a_misspelling_finds_the_field_it_misspells(typo, meant):
    assert nearest(typo, HTTP_CHECK) == meant


def test_a_name_like_none_of_them_gets_no_hint():
    assert nearest("replicas", HTTP_CHECK) is None
    assert nearest("x", HTTP_CHECK) is None


def test_same_meaning_words_of_a_definitions_fields():
    assert nearest("command", ("image", "cmd", "entrypoint")) == "cmd"
    assert nearest("environment", ("image", "cmd", "env")) == "env"
    assert nearest("work_directory", ("image", "work_dir", "env")) == "work_dir"
