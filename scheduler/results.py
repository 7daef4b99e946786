"""Results: values an op's log lines yield to its results regexes, as Nosana extracts them."""

from __future__ import annotations

import re
from typing import Iterable

from scheduler.jobdef import compile_result_regex

# Nosana's logType names, as our log streams: nodeerr is what the node itself said.
STREAMS_OF = {"stdout": {"stdout"}, "stderr": {"stderr"}, "stdin": set(), "nodeerr": {"system"}, "all": {"stdout", "stderr", "system"}}


def streams_for(log_types: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in log_types:
        found |= STREAMS_OF.get(name, set())
    return found


def extract(rules: dict[str, dict], lines: list[tuple[str, str]]) -> dict[str, list[str] | str]:
    """Apply each rule to the lines of its streams.

    Each matching line gives its first match and then the match's groups; a result is the list of
    those, in order ([] when nothing matched). A regex that does not compile yields its error
    message instead, once there was a line to read.
    """
    out: dict[str, list[str] | str] = {}
    for name, rule in rules.items():
        streams = streams_for(rule.get("log_types") or ("all",))
        selected = [text for stream, text in lines if stream in streams]
        try:
            pattern = compile_result_regex(rule["regex"])
        except re.error as e:
            out[name] = f"Invalid regular expression {rule['regex']!r}: {e}" if selected else []
            continue
        values: list[str] = []
        for text in selected:
            match = pattern.search(text)
            if match:
                values.append(match.group(0))
                values.extend(g for g in match.groups() if g is not None)
        out[name] = values
    return out
