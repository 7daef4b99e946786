"""One rule for writing an op id where only a few characters are allowed."""

import re

import pytest

from protocol.names import SLUG_LENGTH, op_slug

DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
IDS = ["gpt-oss:120b", "a/b", "x..y", "..", ".", "ünïcode", "日本", "-dash", "_private", "UPPER", "a" * 200,
       "a" * 200 + "b", "%%", "a/../../etc/passwd", "trailing-"]


@pytest.mark.parametrize("op_id", IDS)
def test_a_slug_is_a_docker_name_a_host_name_and_a_file_name(op_id):
    slug = op_slug(op_id)
    assert DOCKER_NAME.fullmatch(slug) and DNS_LABEL.fullmatch(slug) and len(slug) <= SLUG_LENGTH
    assert "/" not in slug and slug not in (".", "..")


def test_an_id_that_is_already_safe_is_its_own_slug():
    assert [op_slug(i) for i in ("hello", "count-1", "vllm-llama3")] == ["hello", "count-1", "vllm-llama3"]


def test_ids_that_differ_only_in_what_had_to_change_keep_different_slugs():
    slugs = {op_slug(i) for i in IDS + ["gpt-oss-120b", "gpt-oss/120b", "GPT-oss:120b", "x.y", "x...y"]}
    assert len(slugs) == len(IDS) + 5


def test_a_slug_keeps_what_it_can_of_the_id():
    assert op_slug("gpt-oss:120b").startswith("gpt-oss-120b-")
    assert op_slug("..").startswith("op-")
