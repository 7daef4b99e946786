"""Running an op's container with the Docker engine, streaming its output line by line."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import docker
from docker.errors import APIError, DockerException, NotFound

from worker.archives import folders_tar, inputs_tar, write_gzip
from worker.errors import ContainerFailed, RuntimeUnavailable, docker_reason
from worker.images import PrivateImages, image_to_run
from worker.reach import LOOPBACK, Reach, dial_target

log = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]  # (stream, text)


# What a container keeps of Linux's capabilities: enough for images that install packages or drop to
# another user in their entrypoint; nothing that reaches the host (no SYS_ADMIN, NET_ADMIN, NET_RAW...).
KEPT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL")


@dataclass(frozen=True)
class Limits:
    """What one container may use of the node."""

    pids: int = 4096
    memory_mb: int | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class Machine:
    """What the machine running the containers has, as its Docker engine says."""

    memory_mb: int
    cpus: int


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    # May hold secret values: kept out of any repr, so no log line can print them.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    work_dir: str | None = None
    network: str = "none"
    # The names the container answers to on its network (its job network: worker.networks).
    aliases: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # The folder whose contents are collected when the container ends.
    output: str | None = None
    # Named Docker volumes mounted at container paths.
    volumes: dict[str, str] = field(default_factory=dict)
    # GPU UUIDs the container gets; simulated ones are only named in its environment.
    gpus: tuple[str, ...] = ()
    simulated_gpus: bool = False
    limits: Limits = field(default_factory=Limits)
    # Ports the op exposes: binding a low port is the one extra capability an op may need.
    exposes_ports: bool = False
    # Container ports published on the engine's loopback, each on a port the engine picks, which
    # the node's tunnel connects to (never a container's own address).
    ports: tuple[int, ...] = ()
    # docker-py's auth_config for pulling the image from a private registry.
    registry_auth: dict[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Owner:
    """Whose things on a Docker engine these are: a node of a cluster.

    One engine may serve workers of several clusters, whose nodes and jobs have the same ids, so
    everything a worker makes carries both labels, and it lists and removes only what does.
    """

    cluster: str
    node: int

    def labels(self) -> dict[str, str]:
        return {"peergrid.cluster": self.cluster, "peergrid.node": str(self.node)}


def volume_name(cluster: str, job_id: int, name: str) -> str:
    """The Docker volume behind a job's named volume: one per cluster, job and name."""
    return f"peergrid-{cluster}-{job_id}-{name}"


def container_spec(
    spec: dict,
    *,
    network: str,
    cluster: str = "",
    job_id: int = 0,
    attempt: int = 1,
    labels: dict[str, str] | None = None,
    gpus: list[str] | tuple[str, ...] = (),
    simulated_gpus: bool = False,
    limits: Limits | None = None,
    ports: tuple[int, ...] = (),
    aliases: tuple[str, ...] = (),
) -> ContainerSpec:
    """Translate an op's spec (Nosana args) into what Docker is asked to run.

    As in Nosana, a string cmd runs in `/bin/sh -c`, also when the op sets an entrypoint (which
    then receives those three arguments); a list runs as it is.
    """
    cmd = spec.get("cmd")
    entrypoint = spec.get("entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    if isinstance(cmd, str):
        command = ["/bin/sh", "-c", cmd]
    else:
        command = list(cmd) if cmd else None
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    env.setdefault("PEERGRID_JOB_ID", str(job_id))
    env.setdefault("NOSANA_ID", str(job_id))
    env.setdefault("PEERGRID_ATTEMPT", str(attempt))
    if gpus:
        env["PEERGRID_GPUS"] = ",".join(gpus)
        if simulated_gpus:
            env["PEERGRID_GPUS_SIMULATED"] = "1"
    volumes = {
        volume_name(cluster, job_id, v["name"]): v["dest"]
        for v in spec.get("volumes") or []
        if isinstance(v, dict) and v.get("name") and v.get("dest")
    }
    return ContainerSpec(
        image=spec["image"],
        command=command,
        entrypoint=list(entrypoint) if entrypoint else None,
        env=env,
        work_dir=spec.get("work_dir") or None,
        network=network,
        aliases=tuple(aliases),
        labels=labels or {},
        output=spec.get("output") or None,
        volumes=volumes,
        gpus=tuple(gpus),
        simulated_gpus=simulated_gpus,
        limits=limits or Limits(),
        exposes_ports=bool(spec.get("expose")),
        ports=tuple(sorted(set(ports))),
        registry_auth=registry_auth(spec),
    )


def registry_auth(spec: dict) -> dict[str, str] | None:
    """Nosana's authentication.docker, as docker-py's auth_config (server is its serveraddress)."""
    docker = (spec.get("authentication") or {}).get("docker")
    if not isinstance(docker, dict) or not docker.get("username"):
        return None
    names = {"username": "username", "password": "password", "email": "email", "server": "serveraddress"}
    return {names[k]: str(v) for k, v in docker.items() if k in names and v}


@dataclass(frozen=True)
class RestartPolicy:
    """When the container is restarted in place (Nosana's restart_policy, as Docker reads it):
    `always` and `unless-stopped` after it exits; any but `no` when a continuous health check keeps
    failing; at most `tries` times if set. An `on-failure` op that exits non-zero is not restarted
    here: the server tries it again as a new attempt (scheduler.jobdef max_attempts), so its
    restart_tries are not counted twice."""

    name: str = "no"
    tries: int | None = None

    def _allows(self, restarts: int) -> bool:
        return self.name != "no" and (self.tries is None or restarts < self.tries)

    def after_exit(self, exit_code: int, restarts: int) -> bool:
        return self._allows(restarts) and self.name in ("always", "unless-stopped")

    def after_unhealthy(self, restarts: int) -> bool:
        return self._allows(restarts)


def restart_policy(spec: dict) -> RestartPolicy:
    """An op's restart_policy: a name, or {"policy", "restart_tries"}."""
    policy = spec.get("restart_policy") or "no"
    if isinstance(policy, dict):
        tries = policy.get("restart_tries")
        return RestartPolicy(str(policy.get("policy") or "no"), int(tries) if tries is not None else None)
    return RestartPolicy(str(policy))


def restart_delay_s(restarts: int) -> float:
    """How long to wait before the restarts-th restart: doubling from half a second, at most 30 s."""
    return min(0.5 * 2 ** (restarts - 1), 30.0)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: an exit code, or an error sentence when the container could not run."""

    exit_code: int | None
    error: str | None = None
    # The output folder as a .tar.gz, when the op has one and it could be read.
    artifact: Path | None = None
    # Whether the container was stopped because should_stop said so, rather than ending by itself.
    stopped: bool = False


class LineSplitter:
    """Turns the chunks of one output stream into whole lines."""

    def __init__(self, stream: str, sink: LineSink):
        self.stream = stream
        self.sink = sink
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        for line in lines:
            self.sink(self.stream, line.rstrip(b"\r").decode("utf-8", errors="replace"))

    def close(self) -> None:
        if self.partial:
            self.sink(self.stream, self.partial.decode("utf-8", errors="replace"))
            self.partial = b""


class DockerRuntime:
    def __init__(self, docker_host: str | None = None, *, private_images: PrivateImages | None = None,
                 reach: Reach | None = None):
        self.docker_host = docker_host
        # How this worker dials its containers' ports (worker.reach).
        self.reach = reach or Reach()
        self.private_images = private_images or PrivateImages()
        self._client: docker.DockerClient | None = None

    @property
    def where(self) -> str:
        return self.docker_host or "the local socket (unix:///var/run/docker.sock)"

    def client(self) -> docker.DockerClient:
        """A connected client, made on first use and remade after the engine went away.

        Raises:
            RuntimeUnavailable: the engine does not answer.
        """
        try:
            if self._client is None:
                self._client = (
                    docker.DockerClient(base_url=self.docker_host, timeout=60)
                    if self.docker_host
                    else docker.from_env(timeout=60)
                )
            self._client.ping()
            return self._client
        except (DockerException, OSError) as e:
            self._client = None
            raise RuntimeUnavailable(
                f"The Docker engine at {self.where} is not answering ({docker_reason(e)}). "
                "Start it (for example `sudo systemctl start docker`) and the worker will use it."
            ) from e

    def create_volume(self, name: str, labels: dict[str, str]) -> Outcome:
        """Make a named volume (once; a second call finds it)."""
        try:
            client = self.client()
            try:
                client.volumes.get(name)
            except NotFound:
                client.volumes.create(name=name, labels={"peergrid": "1", **labels})
        except RuntimeUnavailable as e:
            return Outcome(exit_code=None, error=str(e))
        except (DockerException, OSError) as e:
            return Outcome(exit_code=None, error=f"Docker could not create the volume {name}: {docker_reason(e)}")
        return Outcome(exit_code=0)

    def volume_jobs(self, owner: Owner) -> set[int] | None:
        """The jobs whose volumes owner keeps, or None when the engine cannot say."""
        try:
            volumes = self.client().volumes.list(filters=_having(owner.labels()))
        except (RuntimeUnavailable, DockerException, OSError) as e:
            log.warning("could not list the jobs' volumes: %s", e)
            return None
        jobs = {(v.attrs.get("Labels") or {}).get("peergrid.job", "") for v in volumes}
        return {int(job) for job in jobs if job.isdigit()}

    def remove_volumes(self, owner: Owner, job_id: int) -> int:
        """Remove the volumes owner keeps for a job; one a container still uses stays for a later call."""
        removed = 0
        try:
            for volume in self.client().volumes.list(filters=_having({**owner.labels(), "peergrid.job": str(job_id)})):
                try:
                    volume.remove()
                    removed += 1
                except APIError as e:
                    log.warning("could not remove the volume %s: %s", volume.name, docker_reason(e))
        except (RuntimeUnavailable, DockerException, OSError) as e:
            log.warning("could not remove the jobs' volumes: %s", e)
        return removed

    def remove_leftovers(self, owner: Owner) -> int:
        """Remove containers a previous run of this worker left behind (it was killed, say)."""
        try:
            client = self.client()
            leftovers = client.containers.list(all=True, filters=_having(owner.labels()))
            for container in leftovers:
                container.remove(force=True)
            return len(leftovers)
        except (RuntimeUnavailable, DockerException, OSError) as e:
            log.warning("could not clean up old containers: %s", e)
            return 0

    def machine(self) -> Machine | None:
        """The engine's machine's memory and CPUs, or None when the engine cannot say."""
        try:
            info = self.client().info()
        except (RuntimeUnavailable, DockerException, OSError) as e:
            log.warning("could not ask the Docker engine what its machine has: %s", e)
            return None
        memory_mb, cpus = int(info.get("MemTotal") or 0) // (1024 * 1024), int(info.get("NCPU") or 0)
        return Machine(memory_mb, cpus) if memory_mb and cpus else None

    def check(self) -> str | None:
        """None when the engine answers, else a sentence saying what is wrong and what to do."""
        try:
            self.client()
        except RuntimeUnavailable as e:
            return str(e)
        return None

    def run(
        self,
        spec: ContainerSpec,
        on_line: LineSink,
        *,
        time_limit: Callable[[], float | None] = lambda: None,
        should_stop: Callable[[], bool] = lambda: False,
        on_started: Callable[[], None] = lambda: None,
        on_published: Callable[[dict[int, tuple[str, int]]], None] = lambda ports: None,
        stop_grace_s: int = 5,
        inputs: dict[str, Path] | None = None,
        output_archive: Path | None = None,
        restart: RestartPolicy = RestartPolicy(),
        should_restart: Callable[[], str | None] = lambda: None,
        on_restarting: Callable[[int, str], None] = lambda count, reason: None,
    ) -> Outcome:
        """Run a container to its end, handing each output line to on_line as it arrives, and once
        it runs, where this worker dials each of spec.ports (host, port: worker.reach) to on_published.

        As restart allows, the same container is restarted in place (so it keeps its GPUs) when it
        exits, or when should_restart() gives a reason (a failing health check); on_restarting(count,
        reason) is told first, and on_published again once it runs. A stop or the time limit, which
        spans the restarts, still ends it.

        Parents' outputs (inputs) are placed under /inputs/<op id>/ before it starts; its output
        folder, if it has one, is written to output_archive as a .tar.gz when it ends.
        """
        try:
            client = self.client()
            # Created from the id, so a pull of the same name meanwhile cannot change what runs.
            image_id = image_to_run(client, spec.image, spec.registry_auth, self.private_images)
            self._check_volumes(client, spec)
            container = self._create(client, replace(spec, image=image_id))
            self._place_files(container, spec, inputs or {})
        except (RuntimeUnavailable, ContainerFailed) as e:
            return Outcome(exit_code=None, error=str(e))
        try:
            outcome = self._run_created(
                container, on_line, time_limit, should_stop, lambda: self._published(container, spec, on_published, on_started),
                stop_grace_s, restart=restart, should_restart=should_restart, on_restarting=on_restarting,
                on_restarted=lambda: self._published(container, spec, on_published, lambda: None),
            )
            if spec.output and output_archive is not None and outcome.exit_code is not None:
                outcome = self._collect_output(container, spec.output, output_archive, outcome)
            return outcome
        except (DockerException, OSError) as e:
            return Outcome(exit_code=None, error=f"The Docker engine failed while running the container: {docker_reason(e)}")
        finally:
            try:
                container.remove(force=True)
            except (DockerException, OSError) as e:
                log.warning("could not remove container %s: %s", container.id[:12], e)

    def _published(self, container, spec: ContainerSpec, on_published, on_started) -> None:
        """Tell on_published where this worker dials each of the container's ports, then on_started."""
        if spec.ports:
            try:
                container.reload()
                ports = {port: target for port in spec.ports if (target := dial_target(container, port, self.reach))}
            except (DockerException, OSError, KeyError, ValueError, IndexError) as e:
                log.warning("could not read where container %s's ports are reached: %s", container.id[:12], e)
                ports = {}
            on_published(ports)
        on_started()

    def _check_volumes(self, client: docker.DockerClient, spec: ContainerSpec) -> None:
        """Refuse to run with a job's volume that is gone: Docker would make an empty one silently."""
        for name in spec.volumes:
            try:
                client.volumes.get(name)
            except NotFound:
                raise ContainerFailed(
                    f"The job's volume {name} is no longer on this node, so what earlier ops wrote there is gone."
                ) from None
            except (DockerException, OSError) as e:
                raise ContainerFailed(f"Docker could not find the volume {name}: {docker_reason(e)}") from e

    def _create(self, client: docker.DockerClient, spec: ContainerSpec):
        devices = []
        if spec.gpus and not spec.simulated_gpus:
            # Each GPU is bound by UUID, so the container sees exactly the GPUs its op holds.
            devices = [docker.types.DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])]
        if spec.aliases:
            network = {"network": spec.network, "networking_config": {
                spec.network: client.api.create_endpoint_config(aliases=list(spec.aliases))}}
        else:
            network = {"network_mode": spec.network}
        try:
            return client.containers.create(
                spec.image,
                command=spec.command,
                entrypoint=spec.entrypoint,
                environment=spec.env,
                working_dir=spec.work_dir,
                **network,
                # Published on the host's loopback for a worker there; one in a container dials the
                # container on a network they share, so nothing is published (worker.reach).
                ports=({f"{port}/tcp": ("127.0.0.1", None) for port in spec.ports} or None)
                if self.reach.mode == LOOPBACK else None,
                labels={"peergrid": "1", **spec.labels},
                volumes={name: {"bind": dest, "mode": "rw"} for name, dest in spec.volumes.items()},
                detach=True,
                tty=False,
                stdin_open=False,
                # Never privileged, never the host's network or namespaces, no host paths: only the
                # job's own named volumes; every capability dropped but the few ops commonly need.
                privileged=False,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                cap_add=list(KEPT_CAPABILITIES) + (["NET_BIND_SERVICE"] if spec.exposes_ports else []),
                pids_limit=spec.limits.pids,
                mem_limit=f"{spec.limits.memory_mb}m" if spec.limits.memory_mb else None,
                nano_cpus=int(spec.limits.cpus * 1e9) if spec.limits.cpus else None,
                device_requests=devices or None,
            )
        except (DockerException, OSError) as e:
            raise ContainerFailed(f"Docker could not create the container: {docker_reason(e)}") from e

    def _place_files(self, container, spec: ContainerSpec, inputs: dict[str, Path]) -> None:
        try:
            if spec.output:
                container.put_archive("/", folders_tar(spec.output))
            if inputs:
                container.put_archive("/", inputs_tar(inputs))
        except (DockerException, OSError) as e:
            container.remove(force=True)
            raise ContainerFailed(f"Could not place the op's input files in the container: {docker_reason(e)}") from e

    def _collect_output(self, container, folder: str, dest: Path, outcome: Outcome) -> Outcome:
        try:
            chunks, _ = container.get_archive(folder)
            write_gzip(chunks, dest)
        except NotFound:
            return replace(outcome, error=outcome.error or f"The output folder {folder} does not exist in the container.")
        except (DockerException, OSError) as e:
            return replace(outcome, error=outcome.error or f"Could not read the output folder {folder}: {docker_reason(e)}")
        return replace(outcome, artifact=dest)

    def _run_created(
        self, container, on_line, time_limit, should_stop, on_started, stop_grace_s, *,
        restart: RestartPolicy = RestartPolicy(), should_restart=lambda: None, on_restarting=lambda count, reason: None,
        on_restarted=lambda: None,
    ) -> Outcome:
        out, err = LineSplitter("stdout", on_line), LineSplitter("stderr", on_line)
        began: float | None = None
        restarts = 0
        while True:
            # Attach before starting so no early output is missed (a restart's from then on).
            stream, reader = self._attach(container, out, err, logs=restarts == 0)
            try:
                container.start()
            except APIError as e:
                stream.close()
                return Outcome(exit_code=None, error=f"The container could not start: {docker_reason(e)}")
            if began is None:
                began = time.monotonic()
                on_started()
            else:
                on_restarted()
            stopped_because, restart_why = self._watch(
                container, reader, began, time_limit, should_stop, stop_grace_s,
                should_restart if restart.after_unhealthy(restarts) else lambda: None,
            )
            result = container.wait(timeout=60)
            reader.join(5)
            code = int(result.get("StatusCode", -1))
            if stopped_because is None and restart_why is None and restart.after_exit(code, restarts):
                restart_why = f"it exited with code {code}"
            if stopped_because is not None or restart_why is None:
                break
            restarts += 1
            on_line("system", f"[peergrid] restarting the container in place (restart {restarts}): {restart_why}")
            on_restarting(restarts, restart_why)
            deadline = time.monotonic() + restart_delay_s(restarts)
            while time.monotonic() < deadline and not should_stop():
                time.sleep(0.1)
            if should_stop():
                return Outcome(exit_code=code, stopped=True)
        if stopped_because == "stopped":
            return Outcome(exit_code=code, stopped=True)
        if stopped_because:
            return Outcome(exit_code=code, error=f"The container {stopped_because} and was stopped.")
        if result.get("Error") and result["Error"].get("Message"):
            return Outcome(exit_code=code, error=result["Error"]["Message"])
        return Outcome(exit_code=code)

    def _attach(self, container, out: LineSplitter, err: LineSplitter, *, logs: bool):
        """Attach to the container's output and pump it into out and err in a thread, until it stops."""
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=logs, demux=True)

        def pump() -> None:
            try:
                for stdout_chunk, stderr_chunk in stream:
                    if stdout_chunk:
                        out.feed(stdout_chunk)
                    if stderr_chunk:
                        err.feed(stderr_chunk)
            except Exception as e:  # the engine closed the stream; the exit code still tells
                log.debug("output stream ended: %s", e)
            finally:
                out.close()
                err.close()

        reader = threading.Thread(target=pump, name=f"output-{container.id[:12]}", daemon=True)
        reader.start()
        return stream, reader

    def _watch(self, container, reader, began, time_limit, should_stop, stop_grace_s, should_restart):
        """Wait for the container to stop, stopping it when told to, when it runs out of time, or
        when should_restart() gives a reason. Returns why it was stopped (or None), and that reason."""
        stopped_because: str | None = None
        restart_why: str | None = None
        while reader.is_alive():
            reader.join(0.2)
            if stopped_because is None:
                if should_stop():
                    stopped_because = "stopped"
                elif (limit := time_limit()) is not None and time.monotonic() - began > limit:
                    stopped_because = f"timed out after {limit:g} seconds"
                elif restart_why is None and (restart_why := should_restart()) is not None:
                    self._stop(container, stop_grace_s)
                if stopped_because:
                    self._stop(container, stop_grace_s)
        return stopped_because, restart_why

    @staticmethod
    def _stop(container, stop_grace_s: int) -> None:
        try:
            container.stop(timeout=stop_grace_s)
        except NotFound:
            pass


def _having(labels: dict[str, str]) -> dict[str, list[str]]:
    """Docker's filter for the things carrying all of labels, which must name their cluster and node."""
    if not labels.get("peergrid.cluster") or not labels.get("peergrid.node"):
        raise ValueError("A query of the engine must name the cluster and the node whose things it wants.")
    return {"label": [f"{k}={v}" for k, v in labels.items()]}
