"""Nosana job definitions (version 0.1): reading them, and every problem with them at once."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.gpus import mb_from_gb
from scheduler.errors import InvalidDefinition, PeergridError, Problem
from scheduler.expose import Exposure, ExposedPort, read_expose

RUN = "container/run"
CREATE_VOLUME = "container/create-volume"
OP_TYPES = (RUN, CREATE_VOLUME)
LOG_TYPES = ("stdout", "stderr", "stdin", "nodeerr", "all")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
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
VOLUME_FIELDS = ("name", "dest")
RESTART_POLICY_FIELDS = ("policy", "restart_tries")
DOCKER_AUTH_FIELDS = ("username", "password", "email", "server")
LOGISTICS_FIELDS = ("send", "receive")
# A name other ops of the job reach this one by on its job network: DNS labels, dot-separated.
_ALIAS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# %%ops.<op>.results.<key>%%, %%global.variables.<name>%%, %%global.<builtin>%%
LITERAL = re.compile(r"%%([A-Za-z0-9_.:\-]+)%%")
_JS_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
# As in Nosana, an op id is any text without whitespace (`gpt-oss:120b`); control characters,
# which no log line or page shows faithfully, are refused too.
_ID = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,200}")
# A group's name is kept as the op's (200 characters in the store, which cannot hold a NUL).
_GROUP = re.compile(r"[^\x00-\x1f\x7f-\x9f]{0,200}")
GLOBAL_BUILTINS = ("job", "host", "version")
# How deep objects and lists may nest in a definition (Nosana's own reach 8): what is walked
# again when the job is stored, resolved and run stays far from Python's recursion limit.
MAX_DEPTH = 32
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


def parse_definition(doc: Any, *, max_ops: int | None = None) -> JobDefinition:
    """Read a job definition, or raise with every problem found in it.

    max_ops, when given, is the most ops a job may have here; a longer list is the one problem
    reported, before its ops are read one by one.

    Raises:
        InvalidDefinition: the definition is wrong; `problems` lists each mistake with its JSON path.
    """
    definition, problems = read_definition(doc, max_ops=max_ops)
    if problems or definition is None:
        raise InvalidDefinition(problems)
    return definition


def read_definition(doc: Any, *, max_ops: int | None = None) -> tuple[JobDefinition | None, list[Problem]]:
    """Read a job definition as far as it can be read: its well-formed ops (None where nothing of it
    can be read) and every problem found in it; a definition is valid only without problems."""
    checker = _Checker(max_ops=max_ops)
    definition = checker.check(doc)
    return definition, checker.problems


class _Checker:
    def __init__(self, *, max_ops: int | None = None) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.max_ops = max_ops

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def refuse_unknown(self, path: str, value: dict, known: Iterable[str]) -> None:
        """Refuse each key of value that is not a known field, naming the nearest known one."""
        known = tuple(known)
        for name in value:
            if name in known:
                continue
            where = f"{path}.{name}"
            nearest = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            if nearest:
                self.add(where, f"Unknown field {name!r} (did you mean {nearest[0]!r}?): rename or remove it.")
            else:
                self.add(where, f"Unknown field {name!r}: remove it; the fields here are {', '.join(known)}.")

    # -- top level -------------------------------------------------------------------------

    def check(self, doc: Any) -> JobDefinition | None:
        if not isinstance(doc, dict):
            self.add("$", f"A job definition must be a JSON object, not {_kind(doc)}.")
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
            self.add("$.logistics", f"logistics must be an object, not {_kind(logistics)}.")
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
            self.add("$.meta", f"meta must be an object, not {_kind(meta)}.")
            meta = {}
        self._check_system_requirements(meta.get("system_requirements"))
        global_ = doc.get("global", {})
        if not isinstance(global_, dict):
            self.add("$.global", f"global must be an object, not {_kind(global_)}.")
            global_ = {}
        variables = global_.get("variables", {})
        if not isinstance(variables, dict):
            self.add("$.global.variables", f"variables must be an object, not {_kind(variables)}.")
            variables = {}
        self.refuse_unknown("$.global", global_, GLOBAL_FIELDS)
        defaults = {k: v for k, v in global_.items() if k != "variables" and k in RUN_FIELDS}
        self._check_args("$.global", defaults, require_image=False)

        raw_ops = doc.get("ops")
        if raw_ops is None:
            self.add("$.ops", "Missing: a job needs a list of ops.")
            return None
        if not isinstance(raw_ops, list):
            self.add("$.ops", f"ops must be a list, not {_kind(raw_ops)}.")
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
        self._check_literals(doc, ops, variables)
        self._check_secrets(doc)
        return JobDefinition(
            version="0.1", ops=tuple(ops), variables=variables, meta=meta, warnings=tuple(self.warnings)
        )

    def _check_system_requirements(self, req: Any) -> None:
        if req is None:
            return
        path = "$.meta.system_requirements"
        if not isinstance(req, dict):
            self.add(path, f"system_requirements must be an object, not {_kind(req)}.")
            return
        vram = req.get("vram_total_mb")
        if vram is not None and (not _is_number(vram) or vram < 0):
            self.add(f"{path}.vram_total_mb", "vram_total_mb must be a number of megabytes, 0 or more.")
        cuda = req.get("required_cuda")
        if cuda is not None and not (
            isinstance(cuda, list) and all(isinstance(v, (str, int, float)) for v in cuda)
        ):
            self.add(f"{path}.required_cuda", 'required_cuda must be a list of versions, like ["12.2"].')

    # -- ops -------------------------------------------------------------------------------

    def _check_op(self, path: str, position: int, raw: Any, defaults: dict) -> OpDefinition | None:
        if not isinstance(raw, dict):
            self.add(path, f"An op must be an object, not {_kind(raw)}.")
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
            self.add(f"{path}.args", f"args must be an object, not {_kind(args)}.")
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
            ok &= self._check_args(f"{path}.args", args, require_image=True)
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

    def _check_args(self, path: str, args: dict, *, require_image: bool) -> bool:
        before = len(self.problems)
        image = args.get("image")
        if image is None:
            if require_image:
                self.add(f"{path}.image", "Missing: the container image to run, like \"ubuntu:24.04\".")
        elif not isinstance(image, str) or not image.strip():
            self.add(f"{path}.image", "image must be a non-empty string.")
        else:
            self._no_nul(f"{path}.image", image, "The image name")
        for name in ("cmd", "entrypoint"):
            value = args.get(name)
            if value is not None and not _is_command(value):
                self.add(f"{path}.{name}", f"{name} must be a string or a list of strings.")
            elif isinstance(value, str):
                self._no_nul(f"{path}.{name}", value, name)
            elif value is not None:
                for i, word in enumerate(value):
                    self._no_nul(f"{path}.{name}[{i}]", word, f"{name}[{i}]")
        env = args.get("env")
        if env is not None:
            if not isinstance(env, dict):
                self.add(f"{path}.env", f"env must be an object of names to strings, not {_kind(env)}.")
            else:
                for name, value in env.items():
                    if "\x00" in name:
                        self._no_nul(f"{path}.env", name, f"The env name {name!r}")
                    elif not isinstance(value, (str, int, float, bool)):
                        self.add(f"{path}.env.{name}", f"The value of {name} must be a string.")
                    else:
                        self._no_nul(f"{path}.env.{name}", value, f"The value of {name}")
        work_dir = args.get("work_dir")
        if work_dir is not None and not isinstance(work_dir, str):
            self.add(f"{path}.work_dir", "work_dir must be a path, as a string.")
        else:
            self._no_nul(f"{path}.work_dir", work_dir, "work_dir")
        gpu = args.get("gpu")
        if gpu is not None and not isinstance(gpu, bool):
            self.add(f"{path}.gpu", "gpu must be true or false.")
        vram = args.get("required_vram")
        if vram is not None and (not _is_number(vram) or vram < 0):
            self.add(f"{path}.required_vram", "required_vram must be a number of gigabytes, 0 or more.")
        for name, low in (("gpu_count", 0), ("timeout", 1), ("retries", 0)):
            value = args.get(name)
            if value is not None and (not _is_int(value) or value < low):
                self.add(f"{path}.{name}", f"{name} must be a whole number, {low} or more.")
        market = args.get("market")
        if market is not None and (not isinstance(market, str) or not market):
            self.add(f"{path}.market", "market must be a market's slug, as a string.")
        output = args.get("output")
        if output is not None and not isinstance(output, str):
            self.add(f"{path}.output", "output must be a folder path inside the container.")
        else:
            self._no_nul(f"{path}.output", output, "output")
        volumes = args.get("volumes")
        if volumes is not None:
            if not isinstance(volumes, list):
                self.add(f"{path}.volumes", "volumes must be a list of {\"name\", \"dest\"} objects.")
            else:
                for i, volume in enumerate(volumes):
                    if isinstance(volume, dict):
                        self.refuse_unknown(f"{path}.volumes[{i}]", volume, VOLUME_FIELDS)
                    if not (
                        isinstance(volume, dict)
                        and isinstance(volume.get("name"), str)
                        and isinstance(volume.get("dest"), str)
                    ):
                        self.add(f"{path}.volumes[{i}]", 'A volume needs a "name" and a "dest" path.')
                    else:
                        for key in ("name", "dest"):
                            self._no_nul(f"{path}.volumes[{i}].{key}", volume[key], f"The volume's {key}")
        private = args.get("private")
        if private is not None and not isinstance(private, bool):
            self.add(f"{path}.private", "private must be true or false.")
        aliases = args.get("aliases")
        if aliases is not None:
            self._check_aliases(f"{path}.aliases", aliases)
        policy = args.get("restart_policy")
        if policy is not None:
            self._check_restart_policy(f"{path}.restart_policy", policy)
        resources = args.get("resources")
        if resources is not None and not (
            isinstance(resources, list) and all(isinstance(r, dict) for r in resources)
        ):
            self.add(f"{path}.resources", "resources must be a list of objects.")
        auth = args.get("authentication")
        if auth is not None:
            self._check_authentication(f"{path}.authentication", auth)
        return len(self.problems) == before

    def _no_nul(self, path: str, value: Any, what: str) -> None:
        """Refuse a NUL in what reaches the container: Docker and the kernel cut or refuse it when it starts."""
        if isinstance(value, str) and "\x00" in value:
            self.add(path, f"{what} holds a NUL character, which a container cannot be given: remove it.")

    def _check_authentication(self, path: str, auth: Any) -> None:
        if not isinstance(auth, dict) or set(auth) - {"docker"}:
            self.add(path, 'authentication must be {"docker": {"username", "password", "server"}}.')
            return
        docker = auth.get("docker")
        if docker is None:
            return
        if not isinstance(docker, dict):
            self.add(f"{path}.docker", 'docker must be {"username", "password", "server"}.')
            return
        self.refuse_unknown(f"{path}.docker", docker, DOCKER_AUTH_FIELDS)
        if not docker.get("username") and not docker.get("password"):
            return  # empty fields mean no login, as in Nosana
        for key in ("username", "password"):
            if not isinstance(docker.get(key), str) or not docker[key]:
                self.add(f"{path}.docker.{key}", f"Missing: the registry {key}, as a string.")
        for key in ("server", "email"):
            if docker.get(key) is not None and not isinstance(docker[key], str):
                self.add(f"{path}.docker.{key}", f"{key} must be a string.")
        password = docker.get("password")
        if isinstance(password, str) and password and not _is_secret_reference(password):
            self.add(
                f"{path}.docker.password",
                "Give the password as a secret: `peergrid secret set NAME` keeps it on the server, then write "
                '"password": "%%secrets.NAME%%". A password written here would show wherever the job does.',
            )

    def _check_restart_policy(self, path: str, policy: Any) -> None:
        if isinstance(policy, str):
            name = policy
        elif isinstance(policy, dict):
            self.refuse_unknown(path, policy, RESTART_POLICY_FIELDS)
            name = policy.get("policy")
            tries = policy.get("restart_tries")
            if tries is not None and (not _is_int(tries) or tries < 0):
                self.add(f"{path}.restart_tries", "restart_tries must be a whole number, 0 or more.")
        else:
            self.add(path, "restart_policy must be a policy name or {\"policy\", \"restart_tries\"}.")
            return
        if name not in RESTART_POLICIES:
            self.add(path, f"Unknown restart policy {name!r}: use one of {', '.join(RESTART_POLICIES)}.")

    def _check_aliases(self, path: str, aliases: Any) -> None:
        names = [aliases] if isinstance(aliases, str) else aliases
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.add(path, "aliases must be a name, or a list of names, like [\"db\", \"cache\"].")
            return
        for i, name in enumerate(names):
            where = path if isinstance(aliases, str) else f"{path}[{i}]"
            if LITERAL.fullmatch(name):
                continue  # known once its literal resolves
            if not _ALIAS.fullmatch(name):
                self.add(
                    where,
                    f"Alias {name!r} is not a host name: use letters, digits and - (not first or last), "
                    "at most 63 to a label, labels joined by dots.",
                )

    def _check_execution(self, path: str, execution: Any) -> tuple[str | None, tuple[str, ...], bool, int | None]:
        if execution is None:
            return None, (), False, None
        if not isinstance(execution, dict):
            self.add(path, f"execution must be an object, not {_kind(execution)}.")
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
        if timeout is not None and (not _is_int(timeout) or timeout < 1):
            self.add(f"{path}.timeout", "timeout must be a whole number of seconds, 1 or more.")
            timeout = None
        return group, tuple(depends_on), stop_if, timeout

    def _check_results(self, path: str, results: Any) -> dict[str, ResultRule]:
        if results is None:
            return {}
        if not isinstance(results, dict):
            self.add(path, f"results must be an object of names to regexes, not {_kind(results)}.")
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
            for i, volume in enumerate(op.args.get("volumes") or []):
                if isinstance(volume, dict) and volume.get("name") not in created:
                    self.add(
                        f"$.ops[{index[op.key]}].args.volumes[{i}].name",
                        f"Volume {volume.get('name')!r} is used but no container/create-volume op makes it.",
                    )

    def _check_literals(self, doc: dict, ops: list[OpDefinition], variables: dict) -> None:
        results = {op.key: set(op.results) for op in ops}
        exposed = {op.key: op.exposure.numbers() for op in ops}
        for path, text in _strings(doc.get("ops", []), "$.ops"):
            for match in LITERAL.finditer(text):
                parts = match.group(1).split(".")
                literal = match.group(0)
                if parts[0] == "secrets":
                    continue  # _check_secrets
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

    def _check_secrets(self, doc: dict) -> None:
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


def exposed_ports(expose: Any) -> frozenset[int] | None:
    """The port numbers an op's `expose` names (a range gives each of its ports); None where a
    literal decides them when the op runs. expose is read as parse_definition reads it; what it
    would refuse counts for nothing here."""
    return read_expose("$", expose, [], lambda *_: None).numbers()


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


def _is_secret_reference(text: str) -> bool:
    match = LITERAL.fullmatch(text)
    return match is not None and match.group(1).startswith("secrets.")


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


def _strings(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")


def _kind(value: Any) -> str:
    return {
        dict: "an object", list: "a list", str: "a string", bool: "true/false",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_command(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

