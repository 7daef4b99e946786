"""A job definition's %%...%% references (to ops' results and addresses, globals, secrets) and their checks."""

from __future__ import annotations

import re
from typing import Any

from scheduler.errors import PeergridError, Problem

# %%ops.<op>.results.<key>%%, %%global.variables.<name>%%, %%global.<builtin>%%, %%array.index%%
LITERAL = re.compile(r"%%([A-Za-z0-9_.:\-]+)%%")
GLOBAL_BUILTINS = ("job", "host", "version")
# %%array.index%%: a job's index in its array (scheduler.arrays), known when the array is submitted.
ARRAY_INDEX = "array.index"
# What %%ops.<id>.X%% may name besides results: the op's host name on its job network, the URL of one
# of its exposed ports, and (Nosana's deployments) the URL its first port keeps across a deployment.
OP_ADDRESS_LITERALS = ("host", "endpoint", "deployment_endpoint")
# %%secrets.NAME%%: a value its submitter keeps on the server, handed only to the node that runs the op.
SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
# Where a secret may be used: values that reach only the container's environment or the registry
# login, never a page or an API answer.
_SECRET_PLACE = re.compile(
    r"^\$\.(?:ops\[\d+\]\.args|global)\.(?:env\..+|authentication\.docker\.(?:username|password))$"
)


def check_references(
    doc: dict, variables: dict, results: dict[str, set[str]], exposed: dict[str, frozenset[int] | None],
    problems: list[Problem], *, in_array: bool = False,
) -> None:
    """Add to problems each %%ops.…%% and %%global.…%% in doc's ops that names nothing the job has,
    and each %%array.…%% (in its ops or global defaults) that is not %%array.index%% of an array's job.

    results maps each op's id to the results it defines, exposed to the ports it exposes (None where
    a literal decides them); variables is global.variables; in_array, whether doc is submitted as an array.
    """
    references = _References(problems)
    references.check_literals(doc, variables, results, exposed)
    references.check_array_literals(doc, in_array)


def check_secret_references(doc: dict, problems: list[Problem]) -> None:
    """Add to problems each %%secrets.NAME%% in doc that is not a secret's name, or stands where a secret may not."""
    _References(problems).check_secrets(doc)


class _References:
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def check_literals(
        self, doc: dict, variables: dict, results: dict[str, set[str]], exposed: dict[str, frozenset[int] | None]
    ) -> None:
        for path, text in _strings(doc.get("ops", []), "$.ops"):
            for match in LITERAL.finditer(text):
                parts = match.group(1).split(".")
                literal = match.group(0)
                if parts[0] in ("secrets", "array"):
                    continue  # check_secrets, check_array_literals
                if parts[0] == "ops" and len(parts) >= 3 and parts[2] in OP_ADDRESS_LITERALS:
                    self._check_address_literal(path, literal, parts, exposed)
                elif parts[0] == "ops":
                    if len(parts) != 4 or parts[2] != "results":
                        self.add(path, f"{literal} is not a literal: write %%ops.<op id>.results.<name>%%.")
                    elif parts[1] not in results:
                        self.add(path, f"{literal} names op {parts[1]!r}, which is not an op of this job.")
                    elif parts[3] not in results[parts[1]]:
                        self.add(path, f"{literal} names result {parts[3]!r}, which op {parts[1]!r} does not define.")
                elif parts[0] in ("global", "globals"):
                    if len(parts) >= 2 and parts[1] == "variables":
                        if len(parts) != 3 or parts[2] not in variables:
                            self.add(path, f"{literal} names a variable that global.variables does not define.")
                else:
                    self.add(path, f"{literal} is not a literal: it must start with ops. or global.")
                    continue
                if parts[0] in ("global", "globals") and len(parts) == 2 and parts[1] not in GLOBAL_BUILTINS:
                    self.add(path, f"{literal} is not a known global: use {', '.join(GLOBAL_BUILTINS)} or variables.<name>.")

    def check_array_literals(self, doc: dict, in_array: bool) -> None:
        places = [*_strings(doc.get("global"), "$.global"), *_strings(doc.get("ops", []), "$.ops")]
        for path, text in places:
            for match in LITERAL.finditer(text):
                name = match.group(1)
                if name.split(".")[0] != "array":
                    continue
                if name != ARRAY_INDEX:
                    self.add(path, f"{match.group(0)} is not a literal: an array's job knows only %%array.index%%.")
                elif not in_array:
                    self.add(
                        path,
                        "%%array.index%% has a value only in a job of an array: submit the definition as one "
                        "(peergrid job submit FILE --array 0-9, or POST /api/v1/jobs?array=0-9), or remove it.",
                    )

    def _check_address_literal(
        self, path: str, literal: str, parts: list[str], exposed: dict[str, frozenset[int] | None]
    ) -> None:
        """Check %%ops.ID.host%%, %%ops.ID.endpoint.PORT%% and %%ops.ID.deployment_endpoint%%."""
        key, what = parts[1], parts[2]
        if key not in exposed:
            self.add(path, f"{literal} names op {key!r}, which is not an op of this job.")
            return
        if what == "host":
            if len(parts) != 3:
                self.add(path, f"{literal} is not a literal: write %%ops.{key}.host%%.")
            return
        if what == "endpoint" and (len(parts) != 4 or not parts[3].isdigit()):
            self.add(path, f"{literal} is not a literal: write %%ops.{key}.endpoint.<port>%%.")
            return
        if what == "deployment_endpoint" and len(parts) != 3:
            self.add(path, f"{literal} is not a literal: write %%ops.{key}.deployment_endpoint%%.")
            return
        ports = exposed[key]
        if ports is None:
            return  # its ports are known only once its own literals resolve
        if not ports:
            self.add(path, f"{literal} names an endpoint of op {key!r}, which exposes no port: add \"expose\" to it.")
        elif what == "endpoint" and int(parts[3]) not in ports:
            shown = ", ".join(str(p) for p in sorted(ports))
            self.add(path, f"{literal} names port {parts[3]}, which op {key!r} does not expose (it exposes {shown}).")

    def check_secrets(self, doc: dict) -> None:
        for path, name in secret_references(doc):
            if not SECRET_NAME.match(name):
                self.add(
                    path,
                    f"%%secrets.{name}%% does not name a secret: names are capital letters, digits and _, "
                    "like %%secrets.HF_TOKEN%%.",
                )
            elif not _SECRET_PLACE.match(path):
                self.add(
                    path,
                    f"%%secrets.{name}%% can be used only in env values and in authentication.docker's username "
                    "and password, where it never shows on the job's pages.",
                )


def check_name(name: str) -> str:
    """Return name if it can name a secret.

    Raises:
        PeergridError: it cannot, saying what a name looks like.
    """
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise PeergridError(
            f"{name!r} cannot name a secret: use capital letters, digits and _, starting with a letter or _, "
            "like HF_TOKEN (at most 100 characters)."
        )
    return name


def secret_references(doc: Any) -> list[tuple[str, str]]:
    """Every %%secrets.NAME%% in a definition's ops and global defaults, with its JSON path."""
    if not isinstance(doc, dict):
        return []
    return [*_secrets_in(doc.get("global"), "$.global"), *_secrets_in(doc.get("ops"), "$.ops")]


def secret_names(value: Any) -> set[str]:
    """The names of the secrets referenced anywhere in value."""
    return {name for _, name in _secrets_in(value, "$")}


def _secrets_in(value: Any, path: str):
    for where, text in _strings(value, path):
        for match in LITERAL.finditer(text):
            head, _, name = match.group(1).partition(".")
            if head == "secrets":
                yield where, name


def is_secret_reference(text: str) -> bool:
    match = LITERAL.fullmatch(text)
    return match is not None and match.group(1).startswith("secrets.")


def _strings(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
