"""Tar archives moved in and out of containers: output folders, parents' inputs, empty folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterable


def folders_tar(path: str) -> bytes:
    """A tar that makes the folder path (and its parents) when put into a container at /."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        parts = PurePosixPath(path).parts[1:]
        for i in range(1, len(parts) + 1):
            info = tarfile.TarInfo("/".join(parts[:i]))
            info.type = tarfile.DIRTYPE
            info.mode = 0o777
            tar.addfile(info)
    return buffer.getvalue()


def input_folder(op: str) -> str:
    """The folder name of a parent's output under /inputs: the op id, made one safe path segment
    (Nosana's ids may hold '/', or be '..'): '/' and '%' are percent-encoded, and so is a dot-only id."""
    name = op.replace("%", "%25").replace("/", "%2F")
    return name.replace(".", "%2E") if set(name) <= {"."} else name


def inputs_tar(inputs: dict[str, Path]) -> bytes:
    """A tar placing each parent's output under inputs/<op id>/, to be put into a container at /.

    Each archive holds one top folder (the parent's output folder); its contents move under the op id.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as out:
        for name in ("inputs", *(f"inputs/{input_folder(op)}" for op in sorted(inputs))):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            out.addfile(info)
        for op, archive in sorted(inputs.items()):
            with tarfile.open(archive, mode="r:gz") as src:
                for member in src.getmembers():
                    parts = PurePosixPath(member.name).parts
                    if len(parts) < 2 or ".." in parts or member.issym() or member.islnk() or member.isdev():
                        continue  # the top folder itself, and anything that could point outside
                    member.name = "/".join(("inputs", input_folder(op), *parts[1:]))
                    out.addfile(member, src.extractfile(member) if member.isfile() else None)
    return buffer.getvalue()


def write_gzip(chunks: Iterable[bytes], dest: Path) -> tuple[int, str]:
    """Gzip a stream of tar chunks into dest; return its size and SHA-256."""
    with open(dest, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for chunk in chunks:
                gz.write(chunk)
    digest = hashlib.sha256()
    with open(dest, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return dest.stat().st_size, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def copy_stream(stream, dest: Path) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(stream, out, 1024 * 1024)
