"""Resolving literals in an op's args before it is offered, as Nosana does.

`%%ops.<id>.results.<key>%%`, `%%ops.<id>.host%%`, `%%ops.<id>.endpoint.<port>%%`,
`%%ops.<id>.deployment_endpoint%%`, `%%global.variables.<name>%%` and the builtins `%%global.job%%`,
`%%global.host%%`, `%%global.version%%`
(`%%array.index%%` is filled in when an array is submitted: fill_array_index); then the collection markers `__spread__` and
`__remove-if-empty__`; then every env value becomes a string.

An endpoint's URL is known before its op runs (as in Nosana, where an op of an earlier group may
hand on the URL of a service of a later one, and a service its own), so an endpoint literal resolves
at once: an op that must wait for the service to answer says so with depends_on, which waits for it
to be ready.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from scheduler.errors import PeergridError
from scheduler.references import ARRAY_INDEX, LITERAL

REMOVE_IF_EMPTY = "__remove-if-empty__"
SPREAD = "__spread__"


class UnresolvedLiteral(PeergridError):
    """Raised when a literal names something that has no value, or a marker's value is unusable."""


@dataclass(frozen=True)
class Scope:
    """What literals can read: finished ops' results, ops' host names and endpoint URLs, the job's
    variables, and builtins."""

    job_id: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each op's name on its job network.
    hosts: dict[str, str] = field(default_factory=dict)
    # (op id, port) → the URL of that port of that op, or None when it exposes no such port; a
    # port of None asks for its first port (Nosana's deployment_endpoint).
    endpoints: Callable[[str, int | None], str | None] = lambda key, port: None
    variables: dict[str, Any] = field(default_factory=dict)
    version: str = "0.1"

    def lookup(self, name: str) -> Any:
        parts = name.split(".")
        head = parts[0]
        if head == "secrets":
            # Left as written: a secret's value is put in only in the claim answer, for the op's node.
            return f"%%{name}%%"
        if head == "ops" and len(parts) == 4 and parts[2] == "results":
            op_results = self.results.get(parts[1])
            if op_results is None or parts[3] not in op_results:
                raise UnresolvedLiteral(f"Unresolved literal %%{name}%%: op {parts[1]!r} has no result {parts[3]!r} yet.")
            return op_results[parts[3]]
        if head == "ops" and len(parts) == 3 and parts[2] == "host" and parts[1] in self.hosts:
            return self.hosts[parts[1]]
        if head == "ops" and len(parts) == 4 and parts[2] == "endpoint" and parts[3].isdigit():
            return self._endpoint(name, parts[1], int(parts[3]))
        if head == "ops" and len(parts) == 3 and parts[2] == "deployment_endpoint":
            return self._endpoint(name, parts[1], None)
        if head in ("global", "globals") and len(parts) == 3 and parts[1] == "variables":
            if parts[2] not in self.variables:
                raise UnresolvedLiteral(f"Unresolved literal %%{name}%%: global.variables has no {parts[2]!r}.")
            return self.variables[parts[2]]
        if head == "array":
            raise UnresolvedLiteral(
                f"Unresolved literal %%{name}%%: only the jobs of an array have %%array.index%%; submit the "
                "definition with --array, or remove it."
            )
        if head in ("global", "globals") and len(parts) == 2:
            builtins = {"job": str(self.job_id), "host": f"peergrid-job-{self.job_id}", "version": self.version}
            if parts[1] in builtins:
                return builtins[parts[1]]
        raise UnresolvedLiteral(f"Unresolved literal %%{name}%%.")

    def _endpoint(self, name: str, key: str, port: int | None) -> str:
        url = self.endpoints(key, port) if key in self.hosts else None
        if url is None:
            what = f"port {port}" if port is not None else "any port"
            raise UnresolvedLiteral(f"Unresolved literal %%{name}%%: op {key!r} does not expose {what}.")
        return url


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_as_text(v) for v in value)
    if isinstance(value, (dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def _maybe_json(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def _whole(value: str) -> str | None:
    match = LITERAL.fullmatch(value)
    return match.group(1) if match else None


def _interpolate(value: Any, scope: Scope, *, in_list: bool = False) -> tuple[Any, bool]:
    """Return the resolved value and whether it should be flattened into a surrounding list."""
    if isinstance(value, str):
        name = _whole(value)
        if name is not None:
            raw = scope.lookup(name)
            if in_list:
                items = raw if isinstance(raw, list) else [raw]
                flat = []
                for item in items:
                    parsed = _maybe_json(item) if isinstance(item, str) else item
                    flat.extend(parsed if isinstance(parsed, list) else [parsed])
                return flat, True
            if isinstance(raw, list):
                raw = raw[0] if len(raw) == 1 else " ".join(_as_text(v) for v in raw)
            return (_maybe_json(raw) if isinstance(raw, str) else raw), False
        return LITERAL.sub(lambda m: _as_text(scope.lookup(m.group(1))), value), False
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            resolved, flatten = _interpolate(item, scope, in_list=True)
            if flatten:
                out.extend(resolved)
            else:
                out.append(resolved)
        return out, False
    if isinstance(value, dict):
        return {k: _interpolate(v, scope)[0] for k, v in value.items()}, False
    return value, False


def _spread(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {k: _spread(v) for k, v in value.items() if k != SPREAD}
        if SPREAD in value:
            # The spread object is merged last: its keys overwrite the ones written beside it.
            out.update({k: _spread(v) for k, v in _parse_marker(value[SPREAD], dict).items()})
        return out
    if isinstance(value, list):
        out_list: list[Any] = []
        for item in value:
            if isinstance(item, dict) and set(item) == {SPREAD}:
                parsed = _parse_marker(item[SPREAD], (list, dict))
                out_list.extend(_spread(v) for v in (parsed if isinstance(parsed, list) else [parsed]))
            else:
                out_list.append(_spread(item))
        return out_list
    return value


def _parse_marker(value: Any, kinds) -> Any:
    if value == "" or value == []:
        return {} if kinds is dict else []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UnresolvedLiteral(f"{SPREAD} needs JSON, and {value[:80]!r} is not JSON.") from None
    if isinstance(value, list) and kinds is dict and len(value) == 1:
        value = value[0]
    if not isinstance(value, kinds):
        raise UnresolvedLiteral(f"{SPREAD} cannot spread {type(value).__name__} here.")
    return value


def resolve_args(args: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """Resolve an op's args, or raise UnresolvedLiteral saying which literal or marker failed."""
    resolved = _spread(_interpolate(args, scope)[0])
    if isinstance(resolved.get("env"), dict):
        resolved["env"] = {k: v if isinstance(v, str) else _as_text(v) for k, v in resolved["env"].items()}
    for key in list(resolved):
        value = resolved[key]
        if isinstance(value, list) and REMOVE_IF_EMPTY in value:
            value = list(value)
            value.remove(REMOVE_IF_EMPTY)
            if value:
                resolved[key] = value
            else:
                del resolved[key]
    return resolved


def has_literals(value: Any) -> bool:
    if isinstance(value, str):
        return bool(LITERAL.search(value)) or value == REMOVE_IF_EMPTY
    if isinstance(value, list):
        return any(has_literals(v) for v in value)
    if isinstance(value, dict):
        return SPREAD in value or any(has_literals(v) for v in value.values())
    return False


def fill_array_index(value: Any, index: int) -> Any:
    """value with each %%array.index%% in its strings replaced by index; every other literal kept."""
    if isinstance(value, str):
        if "%%" not in value:
            return value
        return LITERAL.sub(lambda m: str(index) if m.group(1) == ARRAY_INDEX else m.group(0), value)
    if isinstance(value, list):
        return [fill_array_index(v, index) for v in value]
    if isinstance(value, dict):
        return {k: fill_array_index(v, index) for k, v in value.items()}
    return value
