"""Nosana job definitions (version 0.1): reading them, and every problem with them at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.gpus import mb_from_gb
from scheduler.errors import InvalidDefinition, Problem
from scheduler.expose import Exposure, ExposedPort, read_expose
from scheduler.nearest import nearest
from scheduler.json_kinds import is_int, is_number, kind_of
from scheduler.references import check_references, check_secret_references
from scheduler.run_args import check_run_args

RUN = "container/run"
CREATE_VOLUME = "container/create-volume"
OP_TYPES = (RUN, CREATE_VOLUME)
LOG_TYPES = ("stdout", "stderr", "stdin", "nodeerr", "all")
# The fields each part of a definition may have: Nosana's, then ours (README, "Job definitions and
# workflows"). Anything else is refused at its path, as Nosana's own validator refuses it, so that a
# misspelt field ("gpus") cannot quietly change what a job asks for.
TOP_FIELDS = ("version", "type", "meta", "global", "ops", "logistics", "deployment_id")
OP_FIELDS = ("id", "type", "args", "results", "execution")
EXECUTION_FIELDS = ("group", "depends_on", "stop_if_dependent_stops", "timeout")
RUN_FIELDS = (
    "image", "cmd", "entrypoint", "env", "work_dir", "gpu", "required_vram", "volumes", "output", "expose",
    "private", "aliases", "restart_policy", "resources", "authentication",
    "gpu_count", "market", "timeout", "retries",  # ours
)
CREATE_VOLUME_FIELDS = ("name",)
GLOBAL_FIELDS = (*RUN_FIELDS, "variables")
RESULT_FIELDS = ("regex", "logType")
LOGISTICS_FIELDS = ("send", "receive")
_JS_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
# As in Nosana, an op id is any text without whitespace (`gpt-oss:120b`); control characters,
# which no log line or page shows faithfully, are refused too.
_ID = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,200}")
# A group's name is kept as the op's (200 characters in the store, which cannot hold a NUL).
_GROUP = re.compile(r"[^\x00-\x1f\x7f-\x9f]{0,200}")
# How deep objects and lists may nest in a definition (Nosana's own reach 8): what is walked
# again when the job is stored, resolved and run stays far from Python's recursion limit.
MAX_DEPTH = 32


def compile_result_regex(pattern: str) -> re.Pattern[str]:
    """Compile a results regex written for JavaScript (named groups as (?<name>...))."""
    return re.compile(_JS_NAMED_GROUP.sub("(?P<", pattern), re.MULTILINE)


@dataclass(frozen=True)
class ResultRule:
    regex: str
    # Which of the op's log types the regex reads (Nosana's names).
    log_types: tuple[str, ...] = ("all",)

    def as_dict(self) -> dict:
        return {"regex": self.regex, "log_types": list(self.log_types)}


@dataclass(frozen=True)
class OpDefinition:
    """One op as written, with the global defaults applied."""

    key: str
    type: str
    position: int
    args: dict[str, Any]
    group: str | None = None
    depends_on: tuple[str, ...] = ()
    stop_if_dependent_stops: bool = False
    results: dict[str, ResultRule] = field(default_factory=dict)
    # Nosana's execution.timeout, in seconds.
    execution_timeout: int | None = None
    # What args.expose names, read; its ports are those a service serves.
    exposure: Exposure = field(default_factory=Exposure)

    @property
    def exposed(self) -> tuple[ExposedPort, ...]:
        """The ports the op serves, each with its service type and health checks."""
        return self.exposure.ports

    @property
    def private(self) -> bool:
        return self.args.get("private") is True

    @property
    def aliases(self) -> tuple[str, ...]:
        """The names the op has on its job network besides its id (before literals resolve)."""
        aliases = self.args.get("aliases") or ()
        return (aliases,) if isinstance(aliases, str) else tuple(aliases)

    @property
    def restart_policy(self) -> str:
        policy = self.args.get("restart_policy") or "no"
        return policy.get("policy", "no") if isinstance(policy, dict) else policy

    @property
    def group_key(self) -> tuple[str, str]:
        """The op's group; an op with none is a group of its own, as in Nosana."""
        return group_key(self.key, self.group)

    @property
    def image(self) -> str | None:
        return self.args.get("image")

    @property
    def gpu_count(self) -> int:
        if "gpu_count" in self.args:
            return int(self.args["gpu_count"])
        return 1 if self.args.get("gpu") else 0

    @property
    def min_vram_mb(self) -> int:
        return mb_from_gb(self.args.get("required_vram") or 0)

    @property
    def timeout_s(self) -> int | None:
        return self.args.get("timeout") or self.execution_timeout

    @property
    def max_attempts(self) -> int:
        """Tries allowed: 1 plus our `retries`, or Nosana's on-failure restart tries."""
        tries = 1 + int(self.args.get("retries") or 0)
        policy = self.args.get("restart_policy")
        if isinstance(policy, dict) and policy.get("policy") == "on-failure":
            tries = max(tries, 1 + int(policy.get("restart_tries") or 0))
        return tries


@dataclass(frozen=True)
class JobDefinition:
    version: str
    ops: tuple[OpDefinition, ...]
    variables: dict[str, Any]
    meta: dict[str, Any]
    # Things that will not stop the job but that its author should know.
    warnings: tuple[Problem, ...] = ()

    def op(self, key: str) -> OpDefinition:
        return next(o for o in self.ops if o.key == key)


def group_key(op_key: str, group: str | None) -> tuple[str, str]:
    """Which group an op is in: its named group, or a group of its own (never the same as a named one)."""
    return ("group", group) if group is not None else ("op", op_key)


def group_ranks(ops: Iterable[tuple[str, str | None]]) -> dict[str, int]:
    """Each op's group's place in the order groups run, by first appearance: (key, group) pairs in
    position order in, op key → rank out."""
    first: dict[tuple[str, str], int] = {}
    ranks = {}
    for key, group in ops:
        ranks[key] = first.setdefault(group_key(key, group), len(first))
    return ranks


def parse_definition(doc: Any, *, max_ops: int | None = None, in_array: bool = False) -> JobDefinition:
    """Read a job definition, or raise with every problem found in it.

    max_ops, when given, is the most ops a job may have here; a longer list is the one problem
    reported, before its ops are read one by one.

    Raises:
        InvalidDefinition: the definition is wrong; `problems` lists each mistake with its JSON path.
    """
    definition, problems = read_definition(doc, max_ops=max_ops, in_array=in_array)
    if problems or definition is None:
        raise InvalidDefinition(problems)
    return definition


def read_definition(
    doc: Any, *, max_ops: int | None = None, in_array: bool = False
) -> tuple[JobDefinition | None, list[Problem]]:
    """Read a job definition as far as it can be read: its well-formed ops (None where nothing of it
    can be read) and every problem found in it; a definition is valid only without problems.
    in_array: it is submitted as an array, whose jobs know %%array.index%%."""
    checker = _Checker(max_ops=max_ops, in_array=in_array)
    definition = checker.check(doc)
    return definition, checker.problems


class _Checker:
    def __init__(self, *, max_ops: int | None = None, in_array: bool = False) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.max_ops = max_ops
        self.in_array = in_array

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def refuse_unknown(self, path: str, value: dict, known: Iterable[str]) -> None:
        """Refuse each key of value that is not a known field, naming the nearest known one."""
        known = tuple(known)
        for name in value:
            if name in known:
                continue
            where = f"{path}.{name}"
            meant = nearest(str(name), known)
            if meant:
                self.add(where, f"Unknown field {name!r} (did you mean {meant!r}?): rename or remove it.")
            else:
                self.add(where, f"Unknown field {name!r}: remove it; the fields here are {', '.join(known)}.")

    # -- top level -------------------------------------------------------------------------

    def check(self, doc: Any) -> JobDefinition | None:
        if not isinstance(doc, dict):
            self.add("$", f"A job definition must be a JSON object, not {kind_of(doc)}.")
            return None
        deep = _too_deep(doc)
        if deep is not None:
            self.add(deep, f"The definition nests deeper than {MAX_DEPTH} levels here; flatten it.")
            return None
        self.refuse_unknown("$", doc, TOP_FIELDS)
        logistics = doc.get("logistics")
        if isinstance(logistics, dict):
            self.refuse_unknown("$.logistics", logistics, LOGISTICS_FIELDS)
        elif logistics is not None:
            self.add("$.logistics", f"logistics must be an object, not {kind_of(logistics)}.")
        deployment = doc.get("deployment_id")
        if deployment is not None and not isinstance(deployment, str):
            self.add("$.deployment_id", "deployment_id must be a string.")
        version = doc.get("version")
        if version is None:
            self.add("$.version", 'Missing: add "version": "0.1".')
        elif version != "0.1":
            self.add(
                "$.version",
                f'Unsupported version {version!r}: peergrid reads version "0.1" of the format; rewrite the '
                'definition for it and set "version": "0.1".',
            )
        kind = doc.get("type", "container")
        if kind != "container":
            self.add("$.type", f'Unsupported job type {kind!r}: only "container" is understood.')
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            self.add("$.meta", f"meta must be an object, not {kind_of(meta)}.")
            meta = {}
        self._check_system_requirements(meta.get("system_requirements"))
        global_ = doc.get("global", {})
        if not isinstance(global_, dict):
            self.add("$.global", f"global must be an object, not {kind_of(global_)}.")
            global_ = {}
        variables = global_.get("variables", {})
        if not isinstance(variables, dict):
            self.add("$.global.variables", f"variables must be an object, not {kind_of(variables)}.")
            variables = {}
        self.refuse_unknown("$.global", global_, GLOBAL_FIELDS)
        defaults = {k: v for k, v in global_.items() if k != "variables" and k in RUN_FIELDS}
        check_run_args("$.global", defaults, require_image=False, problems=self.problems, refuse_unknown=self.refuse_unknown)

        raw_ops = doc.get("ops")
        if raw_ops is None:
            self.add("$.ops", "Missing: a job needs a list of ops.")
            return None
        if not isinstance(raw_ops, list):
            self.add("$.ops", f"ops must be a list, not {kind_of(raw_ops)}.")
            return None
        if not raw_ops:
            if "logistics" in doc:
                self.add(
                    "$.ops",
                    "This is a confidential job's stub: its ops come from Nosana's own infrastructure, which "
                    "peergrid does not reach. peergrid needs the full definition, with its ops: submit that instead.",
                )
            else:
                self.add("$.ops", "The job has no ops: add at least one.")
            return None
        if self.max_ops is not None and len(raw_ops) > self.max_ops:
            self.add(
                "$.ops",
                f"The job has {len(raw_ops)} ops; this server takes at most {self.max_ops} in one job. Split it "
                "into several jobs (ops that depend on each other's results must stay together), or ask its "
                "operator to raise PEERGRID_MAX_OPS_PER_JOB.",
            )
            return None

        ops: list[OpDefinition] = []
        seen: dict[str, int] = {}  # every op id written, with its first op's place, valid or not
        for i, raw in enumerate(raw_ops):
            op = self._check_op(f"$.ops[{i}]", i, raw, defaults)
            key = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(key, str) and key in seen:
                self.add(f"$.ops[{i}].id", f"Duplicate op id {key!r}: op {seen[key]} has it too.")
                continue
            if isinstance(key, str):
                seen[key] = i
            if op is not None:
                ops.append(op)
        self._check_graph(ops, seen)
        self._check_volumes(ops, seen)
        check_references(
            doc, variables, {op.key: set(op.results) for op in ops}, {op.key: op.exposure.numbers() for op in ops},
            self.problems, in_array=self.in_array,
        )
        check_secret_references(doc, self.problems)
        return JobDefinition(
            version="0.1", ops=tuple(ops), variables=variables, meta=meta, warnings=tuple(self.warnings)
        )

    def _check_system_requirements(self, req: Any) -> None:
        if req is None:
            return
        path = "$.meta.system_requirements"
        if not isinstance(req, dict):
            self.add(path, f"system_requirements must be an object, not {kind_of(req)}.")
            return
        vram = req.get("vram_total_mb")
        if vram is not None and (not is_number(vram) or vram < 0):
            self.add(f"{path}.vram_total_mb", "vram_total_mb must be a number of megabytes, 0 or more.")
        cuda = req.get("required_cuda")
        if cuda is not None and not (
            isinstance(cuda, list) and all(isinstance(v, (str, int, float)) for v in cuda)
        ):
            self.add(f"{path}.required_cuda", 'required_cuda must be a list of versions, like ["12.2"].')

    # -- ops -------------------------------------------------------------------------------

    def _check_op(self, path: str, position: int, raw: Any, defaults: dict) -> OpDefinition | None:
        if not isinstance(raw, dict):
            self.add(path, f"An op must be an object, not {kind_of(raw)}.")
            return None
        self.refuse_unknown(path, raw, OP_FIELDS)
        key = raw.get("id")
        ok = True
        if key is None:
            self.add(f"{path}.id", "Missing: every op needs an id.")
            ok = False
        elif not isinstance(key, str) or not _ID.fullmatch(key):
            self.add(
                f"{path}.id",
                f"Op id {key!r} must be a string of 1 to 200 characters without spaces, line breaks or "
                "other control characters.",
            )
            ok = False
        op_type = raw.get("type")
        if op_type is None:
            self.add(f"{path}.type", f"Missing: the op type, one of {', '.join(OP_TYPES)}.")
            ok = False
        elif op_type not in OP_TYPES:
            self.add(f"{path}.type", f"Unknown op type {op_type!r}: use one of {', '.join(OP_TYPES)}.")
            ok = False
        args = raw.get("args")
        if args is None:
            self.add(f"{path}.args", "Missing: every op needs args.")
            args = {}
            ok = False
        elif not isinstance(args, dict):
            self.add(f"{path}.args", f"args must be an object, not {kind_of(args)}.")
            args = {}
            ok = False
        exposure = Exposure()
        if op_type == CREATE_VOLUME:
            self.refuse_unknown(f"{path}.args", args, CREATE_VOLUME_FIELDS)
            name = args.get("name")
            if not isinstance(name, str) or not name:
                self.add(f"{path}.args.name", "A container/create-volume op needs the volume's name.")
                ok = False
        elif op_type == RUN:
            self.refuse_unknown(f"{path}.args", args, RUN_FIELDS)
            args = {k: v for k, v in args.items() if k in RUN_FIELDS}
            merged = {**defaults, **args}
            if isinstance(defaults.get("env"), dict) and isinstance(args.get("env"), dict):
                merged["env"] = {**defaults["env"], **args["env"]}
            if defaults.get("gpu") is True:
                merged["gpu"] = True  # as in Nosana, an op cannot turn off a global gpu
            args = merged
            ok &= check_run_args(
                f"{path}.args", args, require_image=True, problems=self.problems, refuse_unknown=self.refuse_unknown
            )
            before = len(self.problems)
            exposure = read_expose(f"{path}.args.expose", args.get("expose"), self.problems, self.refuse_unknown)
            ok &= len(self.problems) == before

        group, depends_on, stop_if, timeout = self._check_execution(f"{path}.execution", raw.get("execution"))
        results = self._check_results(f"{path}.results", raw.get("results"))
        if not ok or not isinstance(key, str):
            return None
        return OpDefinition(
            key=key,
            type=op_type,
            position=position,
            args=args,
            group=group,
            depends_on=depends_on,
            stop_if_dependent_stops=stop_if,
            results=results,
            execution_timeout=timeout,
            exposure=exposure,
        )

    def _check_execution(self, path: str, execution: Any) -> tuple[str | None, tuple[str, ...], bool, int | None]:
        if execution is None:
            return None, (), False, None
        if not isinstance(execution, dict):
            self.add(path, f"execution must be an object, not {kind_of(execution)}.")
            return None, (), False, None
        self.refuse_unknown(path, execution, EXECUTION_FIELDS)
        group = execution.get("group")
        if group is not None and not isinstance(group, str):
            self.add(f"{path}.group", "group must be a string.")
            group = None
        elif group is not None and not _GROUP.fullmatch(group):
            self.add(f"{path}.group", "group must be at most 200 characters, without control characters.")
            group = None
        depends_on = execution.get("depends_on", [])
        if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
            self.add(f"{path}.depends_on", "depends_on must be a list of op ids.")
            depends_on = []
        stop_if = execution.get("stop_if_dependent_stops", False)
        if not isinstance(stop_if, bool):
            self.add(f"{path}.stop_if_dependent_stops", "stop_if_dependent_stops must be true or false.")
            stop_if = False
        timeout = execution.get("timeout")
        if timeout is not None and (not is_int(timeout) or timeout < 1):
            self.add(f"{path}.timeout", "timeout must be a whole number of seconds, 1 or more.")
            timeout = None
        return group, tuple(depends_on), stop_if, timeout

    def _check_results(self, path: str, results: Any) -> dict[str, ResultRule]:
        if results is None:
            return {}
        if not isinstance(results, dict):
            self.add(path, f"results must be an object of names to regexes, not {kind_of(results)}.")
            return {}
        rules: dict[str, ResultRule] = {}
        for name, rule in results.items():
            where = f"{path}.{name}"
            log_types: tuple[str, ...] = ("all",)
            if isinstance(rule, str):
                regex = rule
            elif isinstance(rule, dict) and isinstance(rule.get("regex"), str):
                self.refuse_unknown(where, rule, RESULT_FIELDS)
                regex = rule["regex"]
                raw = rule.get("logType", "all")
                names = [raw] if isinstance(raw, str) else raw
                if not isinstance(names, list) or not names or any(n not in LOG_TYPES for n in names):
                    self.add(
                        f"{where}.logType",
                        f"Unknown logType {raw!r}: use one of {', '.join(LOG_TYPES)}, or a list of them.",
                    )
                    continue
                log_types = tuple(names)
            else:
                self.add(where, 'A result is a regex string or {"regex", "logType"}.')
                continue
            try:
                compile_result_regex(regex)
            except re.error as e:
                # Nosana accepts such a definition and reports the result as an error when it runs
                # (its own examples rely on that), so this is a warning, not a problem.
                self.warnings.append(Problem(where, f"The regex does not compile ({e}); this result will be empty."))
            rules[name] = ResultRule(regex=regex, log_types=log_types)
        return rules

    # -- across ops ------------------------------------------------------------------------

    def _check_graph(self, ops: list[OpDefinition], index: dict[str, int]) -> None:
        for op in ops:
            for j, dep in enumerate(op.depends_on):
                where = f"$.ops[{index[op.key]}].execution.depends_on[{j}]"
                if dep == op.key:
                    self.add(where, f"Op {op.key!r} cannot depend on itself.")
                elif dep not in index:
                    self.add(where, f"depends_on names {dep!r}, which is not an op of this job.")
        rank = group_ranks((op.key, op.group) for op in ops)
        for op in ops:
            for j, dep in enumerate(op.depends_on):
                if dep in rank and rank[dep] > rank[op.key]:
                    self.add(
                        f"$.ops[{index[op.key]}].execution.depends_on[{j}]",
                        f"Op {op.key!r} depends on {dep!r}, which runs in a later group: "
                        "groups run in order of first appearance.",
                    )
        valid = {op.key for op in ops}
        graph = {op.key: [d for d in op.depends_on if d in valid and d != op.key] for op in ops}
        cycle = _find_cycle(graph)
        if cycle:
            where = f"$.ops[{index[cycle[0]]}].execution.depends_on"
            self.add(where, "These ops depend on each other in a circle: " + " → ".join(cycle) + ".")

    def _check_volumes(self, ops: list[OpDefinition], index: dict[str, int]) -> None:
        created = {op.args.get("name") for op in ops if op.type == CREATE_VOLUME}
        for op in ops:
            volumes = op.args.get("volumes")
            if not isinstance(volumes, list):
                continue  # not a list: refused where the op's args are read (or not a field of its type)
            for i, volume in enumerate(volumes):
                if isinstance(volume, dict) and volume.get("name") not in created:
                    self.add(
                        f"$.ops[{index[op.key]}].args.volumes[{i}].name",
                        f"Volume {volume.get('name')!r} is used but no container/create-volume op makes it.",
                    )


def exposed_ports(expose: Any) -> frozenset[int] | None:
    """The port numbers an op's `expose` names (a range gives each of its ports); None where a
    literal decides them when the op runs. expose is read as parse_definition reads it; what it
    would refuse counts for nothing here."""
    return read_expose("$", expose, [], lambda *_: None).numbers()


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A circle of dependencies, as the ops along it, or None; depth-first without recursion, so a
    chain of thousands of ops is no deeper for it than one of two."""
    white, grey, black = 0, 1, 2
    colour = {node: white for node in graph}
    for root in graph:
        if colour[root] != white:
            continue
        path: list[str] = [root]  # the grey nodes, root first
        pending = [iter(graph[root])]  # each grey node's dependencies not yet visited
        colour[root] = grey
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                colour[path.pop()] = black
                pending.pop()
            elif colour[dep] == grey:
                return path[path.index(dep):] + [dep]
            elif colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                pending.append(iter(graph[dep]))
    return None


def _too_deep(doc: Any) -> str | None:
    """The path of the first object or list nested deeper than MAX_DEPTH, if there is one."""
    # Iterative, so that depth itself cannot exhaust the stack; each entry links to its parent,
    # and the path is spelled out only for the one that is too deep.
    stack: list[tuple[Any, int, tuple | None]] = [(doc, 0, None)]
    while stack:
        value, depth, trail = stack.pop()
        if isinstance(value, dict):
            children = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        if depth == MAX_DEPTH:
            steps = []
            while trail is not None:
                trail, key = trail
                steps.append(f"[{key}]" if isinstance(key, int) else f".{key}")
            return "$" + "".join(reversed(steps))
        stack.extend((item, depth + 1, (trail, key)) for key, item in children if isinstance(item, (dict, list)))
    return None
