"""Outcomes of attempts that the server has not taken yet, kept until it does.

An attempt's end (how it ended, or that it is given back unfinished, with the log lines the server
does not have, and its output folder's archive) is written here before it is sent, one file per
attempt, and removed once the server has answered: taken (2xx), or no longer this node's (409).
What the server could not be told while it was down is sent again until it takes it, by this
process or, after a crash, by the next one before it registers, since registering gives up
whatever the node held.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from protocol.messages import FinishedReport, ReleaseReport
from protocol.wire import ProtocolError
from worker.errors import WorkerError

log = logging.getLogger(__name__)

# Lines of one kept outcome: as many as the log shipper may hold.
_MOST_LINES = 10**7

Outcome = FinishedReport | ReleaseReport
# How each kind of outcome is named in its file.
_KINDS: dict[str, type] = {"finished": FinishedReport, "released": ReleaseReport}


class Outbox:
    """The outcomes not delivered yet, in a folder; without one, in a temporary folder that does
    not outlive the process."""

    def __init__(self, folder: Path | None):
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="peergrid-outbox-"))
        self.folder = folder
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise WorkerError(
                f"The worker's outbox {folder} cannot be made ({e}); give the worker a data dir it can write "
                "(--data-dir)."
            ) from e

    def put(self, attempt_id: int, report: Outcome, *, artifact: Path | None = None) -> None:
        """Keep an attempt's outcome, replacing any kept before, and move its output archive in
        beside it when given one; both are on disk when this returns."""
        kind = next(name for name, cls in _KINDS.items() if isinstance(report, cls))
        body = json.dumps({"attempt_id": attempt_id, kind: report.to_wire()}).encode()
        with self._lock:
            if artifact is not None:
                kept = self._artifact_path(attempt_id)
                shutil.move(artifact, kept)
                _sync_file(kept)
            write_atomically(self.folder, self._path(attempt_id), body)

    def get(self, attempt_id: int) -> Outcome | None:
        """The kept outcome of an attempt; None when there is none, or it cannot be read (then it is
        set aside, with a log line, so it is not tried forever)."""
        with self._lock:
            path = self._path(attempt_id)
            try:
                body = json.loads(path.read_bytes())
                kind = next(name for name in _KINDS if name in body)
                return _KINDS[kind].from_wire(body[kind], most_lines=_MOST_LINES)
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError, StopIteration, ProtocolError) as e:
                log.error("cannot read the kept outcome of attempt %s (%s); moving it to %s.bad", attempt_id, e, path)
                path.replace(path.with_suffix(".bad"))
                return None

    def artifact(self, attempt_id: int) -> Path | None:
        """The output archive kept with an attempt's outcome, until it is uploaded."""
        path = self._artifact_path(attempt_id)
        return path if path.exists() else None

    def drop_artifact(self, attempt_id: int) -> None:
        with self._lock:
            self._artifact_path(attempt_id).unlink(missing_ok=True)

    def remove(self, attempt_id: int) -> None:
        with self._lock:
            self._path(attempt_id).unlink(missing_ok=True)
            self._artifact_path(attempt_id).unlink(missing_ok=True)
            _sync_folder(self.folder)

    def held(self) -> list[int]:
        """The attempts whose outcome is kept, oldest id first."""
        with self._lock:
            return sorted(int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit())

    def _path(self, attempt_id: int) -> Path:
        return self.folder / f"{attempt_id}.json"

    def _artifact_path(self, attempt_id: int) -> Path:
        return self.folder / f"{attempt_id}.output.tar.gz"


def write_atomically(folder: Path, path: Path, body: bytes) -> None:
    """Write beside the final name and rename over it: a crash leaves the old file or the new."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(folder)


def _sync_file(path: Path) -> None:
    with open(path, "rb") as kept:
        os.fsync(kept.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename or removal in folder survive a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
