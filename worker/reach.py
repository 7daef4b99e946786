"""Where the worker dials a job container's port.

A worker on the engine's host dials the port the engine publishes on the host's loopback. A worker
that runs in a container itself (compose.yaml's) has a loopback of its own, where nothing is
published; it reaches its job containers over a Docker network it shares with them instead, and
dials each by its short container id at the container's own port, which Docker's DNS resolves on
that network. Nothing addresses a container by its IP address.

Docker's DNS answers only on user-defined networks, so such a worker runs its jobs on one: on the
network it is told (`--job-network NAME`), or, when told the engine's default `bridge`, on each
job's own network (worker.networks), which it joins when it first dials a port there and leaves
before the network is removed. Jobs there reach each other and the worker's container, which
listens on no port, and nothing of compose's own network (the store, the broker): the worker is on
both, but routes nothing between them.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from docker.errors import APIError, DockerException, NotFound

from worker.errors import WorkerError

log = logging.getLogger(__name__)

# The worker runs on the engine's host, and dials the engine's loopback.
LOOPBACK = "loopback"
# The worker runs in a container, and dials its job containers by name on a network they share.
NETWORK = "network"
MODES = (LOOPBACK, NETWORK)
# Docker's own networks, where its DNS does not answer for container names.
_NO_DNS = ("bridge", "none", "host")


@dataclass(frozen=True)
class Reach:
    """How this worker reaches its job containers' ports."""

    mode: str = LOOPBACK
    # The worker's own container, by name or id (Docker names a container's host after its id, so
    # the hostname does by default); used in network mode only.
    container: str | None = None

    @classmethod
    def of(cls, mode: str, container: str | None = None) -> "Reach":
        """The reach WorkerSettings.job_reach and worker_container name (their values checked there)."""
        return cls(mode, (container or socket.gethostname()) if mode == NETWORK else None)


def jobs_network(client, reach: Reach, requested: str) -> str:
    """The network the node's job containers run on, with this worker on it too in network mode:
    `bridge` and `none` as they are (with `bridge` each job gets a network of its own,
    worker.networks, which the worker joins when it first dials a port there); a network of the
    operator's, joined now.

    Raises:
        WorkerError: the network is one of Docker's own without DNS, the engine has no container of
            the worker's, or the worker could not join the network.
    """
    if reach.mode == LOOPBACK or requested in ("bridge", "none"):
        return requested
    if requested in _NO_DNS:
        raise WorkerError(f"A worker in a container cannot reach job containers on Docker's {requested!r} network; "
                          "use --job-network bridge (each job gets a network of its own) or a network of yours.")
    _join(client, reach, requested)
    return requested


def dial_target(container, port: int, reach: Reach) -> tuple[str, int] | None:
    """Where this worker dials container port `port` of an attempt's container (as last reloaded):
    host and port. On the engine's host, the loopback port the engine publishes it on; from a
    container, the container's short id on a network both are on (joined now if need be), at `port`.
    None when it is not reachable so: not published, or on no network Docker's DNS answers on."""
    settings = container.attrs.get("NetworkSettings") or {}
    if reach.mode == LOOPBACK:
        binding = (settings.get("Ports") or {}).get(f"{port}/tcp")
        return ("127.0.0.1", int(binding[0]["HostPort"])) if binding else None
    networks = [name for name in (settings.get("Networks") or {}) if name not in _NO_DNS]
    if not networks:
        return None
    try:
        if not set(networks) & set(_networks_of(container.client, reach)):
            _join(container.client, reach, networks[0])
    except WorkerError as e:
        log.warning("%s", e)
        return None
    # Docker's DNS answers, on each network of users' own, for the container's short id (and for a
    # name given it, not for one Docker made up): the id needs no name from the runtime.
    return (container.id[:12], port)


def _networks_of(client, reach: Reach) -> list[str]:
    try:
        own = client.containers.get(reach.container)
    except NotFound:
        raise WorkerError(
            f"This worker was told it runs in a container (PEERGRID_JOB_REACH=network), but the Docker engine has "
            f"no container {reach.container!r}; set PEERGRID_WORKER_CONTAINER to its name or id."
        ) from None
    except (DockerException, OSError) as e:
        raise WorkerError(f"The Docker engine could not say which networks this worker is on: {e}") from e
    return list((own.attrs.get("NetworkSettings") or {}).get("Networks") or {})


def _join(client, reach: Reach, network: str) -> None:
    own = _networks_of(client, reach)
    if network in own:
        return
    if not set(own) - set(_NO_DNS):
        # Docker gives a container its embedded DNS only when it starts on a network of users' own.
        raise WorkerError(
            f"This worker's container {reach.container!r} started on none but Docker's own networks, so it cannot "
            "look its job containers up by name; start it on a network of its own, as compose does."
        )
    try:
        client.networks.get(network).connect(reach.container)
    except APIError as e:
        if "already exists" not in str(e):  # joined meanwhile
            raise WorkerError(f"This worker's container could not join network {network}: {e.explanation or e}") from e
    except (DockerException, OSError) as e:
        raise WorkerError(f"This worker's container could not join network {network}: {e}") from e
    log.info("joined network %s, to reach job containers on it by name", network)
