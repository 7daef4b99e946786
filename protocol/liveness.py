"""The health file: when each loop of a long-lived process last went round, for `peergrid health`.

A process beats each of its loops as it goes round; the file says when each last did and how often
it should, so a health check can tell a process whose loop died from one that merely exists. The
worker and the server both write it, so this module uses the standard library alone.

The file, rewritten whole each time:

    {"pid": 12, "written_at": 1700000000.5,
     "loops": {"upkeep": {"at": 1700000000.4, "every_s": 1.0, "detail": "leading"}, ...}}

A loop the process has started but that has not gone round yet is "pending": its "at" is when it
was expected from, and it counts as a problem until its first beat, so that a process is healthy
only once every one of its loops has gone round.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The file is rewritten at most this often, however many loops beat; the beats between are kept
# and written with the next.
WRITE_EVERY_S = 1.0
# The least time past its interval a loop may be late before it counts as dead: room for a slow
# store transaction or a pause on a loop that goes round every second.
GRACE_S = 10.0


def late_after(every_s: float, grace_s: float = GRACE_S) -> float:
    """How long since a loop last went round before it counts as dead."""
    return max(3 * every_s, every_s + grace_s)


class Liveness:
    """Writes when each of this process's loops last went round to the file at path; None writes nothing.

    Any thread may beat. Several processes may share one path (the web's gunicorn workers): each
    write replaces the file whole, so a reader sees one writer's file or another's, never a mix,
    and any writer that still beats keeps it fresh.
    """

    def __init__(self, path: str | os.PathLike | None, *, write_every_s: float = WRITE_EVERY_S):
        self.path = Path(path) if path else None
        self.write_every_s = write_every_s
        self._loops: dict[str, dict] = {}
        self._lock = threading.Lock()
        # time.monotonic() of the last write, so a wall clock set back cannot hold writes off.
        self._written: float | None = None
        self._failing = False

    def beat(self, loop: str, every_s: float, detail: str | None = None) -> None:
        """Record that loop went round now and goes round again within every_s seconds; never raises."""
        if self.path is None:
            return
        with self._lock:
            self._loops[loop] = {"at": time.time(), "every_s": float(every_s), "detail": detail}
            now = time.monotonic()
            if self._written is not None and now - self._written < self.write_every_s:
                return
            self._written = now
            self._write()

    def expect(self, loop: str, within_s: float) -> None:
        """Record that loop has started and should first go round within within_s; until it does,
        the file counts it as a problem. Never raises."""
        if self.path is None:
            return
        with self._lock:
            if loop in self._loops:
                return
            self._loops[loop] = {"at": time.time(), "every_s": float(within_s), "detail": None, "pending": True}
        self.flush()

    def flush(self) -> None:
        """Write what the loops recorded now, however lately the file was written."""
        if self.path is None:
            return
        with self._lock:
            self._written = time.monotonic()
            self._write()

    def _write(self) -> None:
        body = json.dumps({"pid": os.getpid(), "written_at": time.time(), "loops": self._loops})
        try:
            # A temporary file in the same folder, then a rename: a reader never sees half a file.
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                os.fchmod(fd, 0o644)  # the check may run as another user; the file holds nothing secret
                with os.fdopen(fd, "w") as fh:
                    fh.write(body)
                os.replace(temp, self.path)
            except BaseException:
                _remove(temp)
                raise
        except OSError as e:
            if not self._failing:
                log.warning("cannot write the health file %s (health checks will fail): %s", self.path, e)
                self._failing = True
            return
        if self._failing:
            log.info("writing the health file %s again", self.path)
            self._failing = False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@dataclass(frozen=True)
class LoopBeat:
    """What a health file says of one loop, seen at one moment."""

    name: str
    age_s: float
    every_s: float
    detail: str | None
    grace_s: float = GRACE_S
    # It has not gone round yet; age_s is since it was expected.
    pending: bool = False

    @property
    def dead(self) -> bool:
        return self.age_s > late_after(self.every_s, self.grace_s)

    @property
    def well(self) -> bool:
        return not self.dead and not self.pending

    def describe(self) -> str:
        """One phrase: how long ago it went round, and what it said."""
        if self.pending:
            return f"{self.name} has not gone round yet ({self.age_s:.0f} s since its process started it)"
        if self.dead:
            said = f", {self.detail}" if self.detail else ""
            return f"{self.name} last went round {self.age_s:.0f} s ago{said} (it goes round every {self.every_s:g} s)"
        said = f" ({self.detail})" if self.detail else ""
        return f"{self.name} {self.age_s:.1f} s ago{said}"


@dataclass(frozen=True)
class Checkup:
    """A health file read: its loops, and each problem as a sentence (none when healthy)."""

    loops: tuple[LoopBeat, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return ", ".join(beat.describe() for beat in self.loops)


class _Garbled(Exception):
    """Raised when a health file does not hold what Liveness writes."""


def examine(path: str | os.PathLike, *, now: float | None = None, grace_s: float = GRACE_S) -> Checkup:
    """Read the health file at path and say which of its loops are overdue, or why it cannot tell."""
    now = time.time() if now is None else now
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return Checkup((), (f"there is no health file at {path}: the process has not gone round a loop yet, "
                            "or writes its health file elsewhere",))
    except (OSError, UnicodeDecodeError) as e:
        return Checkup((), (f"cannot read the health file {path}: {getattr(e, 'strerror', None) or e}",))
    try:
        loops = _loops(text)
    except _Garbled as e:
        return Checkup((), (f"{path} is not a health file: {e}",))
    if not loops:
        return Checkup((), (f"the health file {path} names no loop",))
    beats = tuple(
        LoopBeat(name, max(0.0, now - at), every_s, detail, grace_s, pending)
        for name, (at, every_s, detail, pending) in loops.items()
    )
    return Checkup(beats, tuple(beat.describe() for beat in beats if not beat.well))


def _loops(text: str) -> dict[str, tuple[float, float, str | None, bool]]:
    try:
        body = json.loads(text)
    except ValueError:
        raise _Garbled("it is not JSON") from None
    loops = body.get("loops") if isinstance(body, dict) else None
    if not isinstance(loops, dict):
        raise _Garbled('it has no "loops" object')
    found = {}
    for name, entry in loops.items():
        if not isinstance(entry, dict):
            raise _Garbled(f"loop {name!r} is not an object")
        at, every_s, detail = entry.get("at"), entry.get("every_s"), entry.get("detail")
        if not _number(at) or not _number(every_s) or every_s <= 0:
            raise _Garbled(f'loop {name!r} lacks a time ("at") or a positive interval ("every_s")')
        if detail is not None and not isinstance(detail, str):
            raise _Garbled(f"the detail of loop {name!r} is not text")
        found[name] = (float(at), float(every_s), detail, entry.get("pending") is True)
    return found


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
