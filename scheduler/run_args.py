"""The args of a container/run op, and the global defaults it takes them from, checked field by field."""

from __future__ import annotations

import re
from typing import Any, Callable

from scheduler.errors import Problem
from scheduler.json_kinds import is_int, is_number, kind_of
from scheduler.references import LITERAL, is_secret_reference

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
# The fields of the objects inside args (args' own are scheduler.jobdef's RUN_FIELDS).
VOLUME_FIELDS = ("name", "dest")
RESTART_POLICY_FIELDS = ("policy", "restart_tries")
DOCKER_AUTH_FIELDS = ("username", "password", "email", "server")
# A name other ops of the job reach this one by on its job network: DNS labels, dot-separated.
_ALIAS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def check_run_args(
    path: str, args: dict, *, require_image: bool, problems: list[Problem], refuse_unknown: Callable
) -> bool:
    """Add to problems each mistake in a run op's args (or, without require_image, the global
    defaults), with its JSON path; whether there was none.

    refuse_unknown(path, value, known) adds a problem for each key of value that is not known.
    """
    return _Args(problems, refuse_unknown).check(path, args, require_image=require_image)


class _Args:
    def __init__(self, problems: list[Problem], refuse_unknown: Callable) -> None:
        self.problems = problems
        self.refuse_unknown = refuse_unknown

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def check(self, path: str, args: dict, *, require_image: bool) -> bool:
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
                self.add(f"{path}.env", f"env must be an object of names to strings, not {kind_of(env)}.")
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
        if vram is not None and (not is_number(vram) or vram < 0):
            self.add(f"{path}.required_vram", "required_vram must be a number of gigabytes, 0 or more.")
        for name, low in (("gpu_count", 0), ("timeout", 1), ("retries", 0)):
            value = args.get(name)
            if value is not None and (not is_int(value) or value < low):
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
        if isinstance(password, str) and password and not is_secret_reference(password):
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
            if tries is not None and (not is_int(tries) or tries < 0):
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


def _is_command(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
