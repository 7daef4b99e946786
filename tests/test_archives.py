"""Parents' outputs placed under /inputs: each under one safe folder, whatever its op's id."""

from __future__ import annotations

import io
import tarfile

import pytest

from worker.archives import input_folder, inputs_tar


def _output(tmp_path, name: str):
    """An op's output as the server keeps it: a .tar.gz whose top folder holds the files."""
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.tar.gz"
    with tarfile.open(path, "w:gz") as out:
        data = b"made by " + name.encode()
        info = tarfile.TarInfo("output/result.txt")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("op,folder", [
    ("prep", "prep"), ("gpt-oss:120b", "gpt-oss:120b"), ("a/b", "a%2Fb"), ("..", "%2E%2E"), (".", "%2E"),
    ("50%", "50%25"),
])
def test_an_op_id_becomes_one_path_segment(op, folder):
    assert input_folder(op) == folder and "/" not in folder and folder not in (".", "..")


def test_no_parents_output_lands_outside_its_folder_under_inputs(tmp_path):
    tar = inputs_tar({op: _output(tmp_path, op) for op in ("..", "a/b", "prep")})
    names = tarfile.open(fileobj=io.BytesIO(tar)).getnames()
    assert sorted(n for n in names if n.endswith("result.txt")) == [
        "inputs/%2E%2E/result.txt", "inputs/a%2Fb/result.txt", "inputs/prep/result.txt"]
    assert all(n == "inputs" or n.startswith("inputs/") and ".." not in n.split("/") for n in names)
