"""Array specs, as Slurm's --array writes them: `0-999`, `0-999%50`, `1,3,5-9`, `0-20:5`.

A spec lists indices and ranges (START-END, both ends included, with an optional :STEP), separated
by commas; `%N` after them is the most of the array's jobs that run at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scheduler.errors import PeergridError

EXAMPLES = "like 0-99, 0-999%50, 1,3,5-9 or 0-20:5"
# The largest index: what an index stored, shown and put in the environment stays well within.
MAX_INDEX = 4_294_967_295
_ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")


class BadArraySpec(PeergridError):
    """Raised when an array spec cannot be read, names no index, or asks for more jobs than allowed."""


@dataclass(frozen=True)
class ArraySpec:
    """The indices of an array's jobs, in order, and the most of them that run at once (None: no limit)."""

    text: str
    indices: tuple[int, ...]
    max_running: int | None = None

    @property
    def size(self) -> int:
        return len(self.indices)


def parse_array_spec(text: str, *, max_size: int) -> ArraySpec:
    """Read an array spec.

    Raises:
        BadArraySpec: it is not one, it names no index, or it names more than max_size (PEERGRID_MAX_ARRAY_SIZE).
    """
    raw = text if isinstance(text, str) else ""
    written = raw.strip().replace(" ", "")
    if not written:
        raise BadArraySpec(f"The array spec is empty: write the indices of its jobs, {EXAMPLES}.")
    body, percent, limit = written.partition("%")
    max_running = None
    if percent:
        if not limit.isdigit() or int(limit) < 1:
            _refuse(raw, f"what follows % must be the most jobs that run at once, a whole number of 1 or more, not {limit!r}")
        max_running = int(limit)
    if not body:
        _refuse(raw, "it has no indices before %")
    ranges: list[range] = []
    count = 0
    for item in body.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            _refuse(raw, f"{item!r} is neither an index (7) nor a range (0-9, or 0-20:5 for every 5th)" if item
                    else "it has an empty item between commas")
        start, end, step = int(match[1]), int(match[2] or match[1]), int(match[3] or 1)
        if max(start, end) > MAX_INDEX:
            _refuse(raw, f"{item!r} goes past the largest index, {MAX_INDEX}")
        if step < 1:
            _refuse(raw, f"{item!r} has a step of 0; a step is 1 or more, as in 0-20:5")
        if end < start:
            _refuse(raw, f"{item!r} is empty: its end is below its start; write it {end}-{start}")
        ranges.append(range(start, end + 1, step))
        count += len(ranges[-1])
        if count > max_size:
            break  # too many already: say so before making a set of them
    if count > max_size:
        raise BadArraySpec(
            f"The array spec {raw.strip()!r} makes {_total(body):,} jobs; this server takes at most {max_size:,} in "
            "one array. Split it into several arrays (0-4999 and 5000-9999, say), or ask its operator to raise "
            "PEERGRID_MAX_ARRAY_SIZE."
        )
    indices = sorted({i for r in ranges for i in r})
    return ArraySpec(text=written, indices=tuple(indices), max_running=max_running)


def _total(body: str) -> int:
    """How many indices the whole body names, counted without making them (repeats counted each time)."""
    total = 0
    for item in body.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            continue
        start, end, step = int(match[1]), int(match[2] or match[1]), max(1, int(match[3] or 1))
        total += len(range(start, end + 1, step))
    return total


def _refuse(text: str, why: str):
    raise BadArraySpec(f"The array spec {text.strip()!r} cannot be read: {why}. Write indices and ranges, {EXAMPLES}.")
