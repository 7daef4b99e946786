"""Artifacts: storing an op's uploaded output folder, and finding it for its owner and its dependents."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler import events
from scheduler.errors import Conflict, NotFound, PeergridError
from scheduler.models import Artifact, Attempt, Job, Node
from scheduler.states import AttemptState, utcnow

CHUNK = 1024 * 1024


class ArtifactTooLarge(PeergridError):
    """Raised when an upload passes the size limit."""


def artifacts_root(data_dir: Path) -> Path:
    return data_dir / "artifacts"


def check_artifacts_writable(data_dir: Path) -> None:
    """Make the artifacts folder if need be and prove this process can write there.

    Raises:
        PeergridError: it cannot, said with who this process is and what to change.
    """
    root = artifacts_root(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".writable-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PeergridError(
            f"Cannot write uploaded outputs under {root} ({e.strerror}): this process runs as uid {os.getuid()}. "
            f"Give that user the data dir (PEERGRID_DATA_DIR), e.g. `chown -R {os.getuid()} {data_dir}`."
        ) from e


def store_artifact(
    session: Session,
    attempt: Attempt,
    stream: BinaryIO,
    *,
    data_dir: Path,
    max_bytes: int,
    expected_sha256: str | None = None,
    now: datetime | None = None,
) -> Artifact:
    """Write an attempt's output archive under the data dir and record it.

    Raises:
        ArtifactTooLarge: the archive is larger than max_bytes; nothing is kept.
        PeergridError: the checksum does not match what the node sent.
        Conflict: the attempt has uploaded its output already.
    """
    now = now or utcnow()
    op = attempt.op
    if session.scalar(select(Artifact.id).where(Artifact.attempt_id == attempt.id)) is not None:
        raise Conflict(f"Attempt {attempt.id} has uploaded its output already.")
    folder = artifacts_root(data_dir) / str(op.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ArtifactTooLarge(
                        f"The output of {op.key} is larger than the {max_bytes // (1024 * 1024)} MB limit."
                    )
                digest.update(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        if expected_sha256 and expected_sha256.lower() != sha:
            raise PeergridError("The output archive arrived damaged (its checksum does not match); send it again.")
        # Named by ids, never by the op's id as written: that may hold '/' or '..' (Nosana allows
        # any text without whitespace), which must not choose where on the server the file goes.
        name = f"op{op.id}-{attempt.id}.tar.gz"
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    artifact = Artifact(
        job_id=op.job_id, op_id=op.id, attempt_id=attempt.id, path=f"{op.job_id}/{name}",
        size_bytes=size, sha256=sha, created_at=now,
    )
    session.add(artifact)
    events.record(session, op.job_id, "artifact", f"{op.key}: output saved ({_size(size)}).", attempt=attempt, now=now)
    return artifact


def job_artifacts(session: Session, job: Job) -> list[Artifact]:
    """The artifacts of job's succeeded attempts, one per op."""
    rows = session.scalars(
        select(Artifact)
        .join(Attempt, Attempt.id == Artifact.attempt_id)
        .where(Artifact.job_id == job.id, Attempt.state == AttemptState.SUCCEEDED)
        .order_by(Artifact.id)
    )
    return list(rows)


def artifact_of_op(session: Session, job: Job, op_key: str) -> Artifact:
    op_ids = {op.id for op in job.ops if op.key == op_key}
    for artifact in job_artifacts(session, job):
        if artifact.op_id in op_ids:
            return artifact
    raise NotFound(f"Op {op_key!r} of job {job.id} has no output to download.")


def input_for(session: Session, node: Node, attempt: Attempt, parent_key: str) -> Artifact:
    """The artifact of parent_key that attempt may read, when attempt is node's and depends on it.

    Raises:
        NotFound: the attempt does not depend on that op, or it left no output.
    """
    op = attempt.op
    if parent_key not in op.depends_on:
        raise NotFound(f"Op {op.key} does not depend on {parent_key!r}.")
    return artifact_of_op(session, op.job, parent_key)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
