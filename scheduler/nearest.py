"""The known name a misspelt one most likely meant, for "did you mean …?" hints.

A field name is read as words (split on "_", "-" and case changes), and a word counts as
matching when it is spelt alike or is a word that means the same in a definition (`code` for
`status`, `cmd` for `command`). So a user who writes `expected_code` is pointed to
`expected_status`, which says the same thing, rather than `expected_response`, which only looks
more alike letter by letter.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

CUTOFF = 0.6
# Words that name the same thing in a definition's fields; each group is one meaning.
_SAME_MEANING = (
    {"code", "status"},
    {"cmd", "command"},
    {"env", "environment", "envs"},
    {"img", "image"},
    {"mem", "memory", "ram"},
    {"dir", "directory", "folder"},
    {"args", "arguments", "argv"},
    {"vars", "variables"},
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def words(name: str) -> list[str]:
    """`expected_status` → [expected, status]; `workDir` → [work, dir]."""
    return [w.lower() for w in _WORD.findall(name)]


def _word_likeness(a: str, b: str) -> float:
    if a == b or any(a in group and b in group for group in _SAME_MEANING):
        return 1.0
    return difflib.SequenceMatcher(None, a, b).ratio()


def _by_words(name: str, candidate: str) -> float:
    """How alike two names are word by word: each word of the longer one against its best match."""
    ours, theirs = words(name), words(candidate)
    if not ours or not theirs:
        return 0.0
    longer, shorter = (ours, theirs) if len(ours) >= len(theirs) else (theirs, ours)
    return sum(max(_word_likeness(w, s) for s in shorter) for w in longer) / len(longer)


def likeness(name: str, candidate: str) -> float:
    """The better of letter-by-letter and word-by-word likeness, from 0 to 1."""
    letters = difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio()
    return max(letters, _by_words(name, candidate))


def nearest(name: str, known: Iterable[str], cutoff: float = CUTOFF) -> str | None:
    """The known name most like name, or None when none is at least cutoff alike."""
    best, best_score = None, cutoff
    for candidate in known:
        score = likeness(name, candidate)
        if score > best_score or (best is None and score >= cutoff):
            best, best_score = candidate, score
    return best
