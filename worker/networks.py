"""Job networks: the Docker network the ops of one job share on a node, where each op's container
answers to its op id (as a DNS label, protocol.names.op_slug) and to the op's `aliases`.

One network per job and node (nodes sharing one engine each have their own), made when the job's
first container here is about to start and removed when its last one here is gone. Like the worker's other things it carries the labels of
its cluster, node and job, so a later run of the worker finds and removes what an earlier one left.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Callable

from docker.errors import APIError, DockerException, NotFound

from protocol.names import op_slug
from worker.errors import ContainerFailed, RuntimeUnavailable, docker_reason

log = logging.getLogger(__name__)

# What a network alias may be: a host name, dot-separated DNS labels.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def job_network_name(cluster: str, node: str, job_id: int) -> str:
    """The Docker network of a job's ops on one node of cluster: named for the node too, since
    nodes may share an engine and each removes its own when its last container of the job is gone."""
    return f"peergrid-{cluster}-node{node}-job-{job_id}"


def network_aliases(op_id: str, aliases: object) -> tuple[str, ...]:
    """The names an op's container answers to on its job network: its op id as a DNS label, then
    each of its aliases that is a host name (one a literal made into something else is dropped)."""
    given = [aliases] if isinstance(aliases, str) else list(aliases) if isinstance(aliases, (list, tuple)) else []
    names = [op_slug(op_id), *(a for a in given if isinstance(a, str) and _HOST_NAME.fullmatch(a))]
    return tuple(dict.fromkeys(names))


class JobNetworks:
    """The job networks of one node on one Docker engine, counted by the containers that use them.

    client gives a connected docker client (worker.runtime.DockerRuntime.client); labels are the
    node's own (worker.runtime.Owner.labels).
    """

    def __init__(self, client: Callable[[], object], labels: Callable[[], dict[str, str]],
                 member: Callable[[], str | None] = lambda: None):
        self._client = client
        self._labels = labels
        # The worker's own container, when it runs in one and joins its jobs' networks (worker.reach):
        # it leaves a network before the network is removed, which the engine refuses while it is on it.
        self._member = member
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, cluster: str, job_id: int) -> str:
        """The job's network, made if it is not there yet; release it once the container is gone.

        Raises:
            ContainerFailed: the engine could not make it.
        """
        name = job_network_name(cluster, self._labels()["peergrid.node"], job_id)
        with self._lock:
            if not self._users.get(name):
                self._ensure(name, job_id)
            self._users[name] = self._users.get(name, 0) + 1
        return name

    def release(self, name: str) -> None:
        """One container of the network's job is gone; remove the network when it was the last."""
        with self._lock:
            left = self._users.get(name, 0) - 1
            if left > 0:
                self._users[name] = left
                return
            self._users.pop(name, None)
            self._remove(name)

    def remove_leftovers(self) -> int:
        """Remove the job networks an earlier run of this node left; return how many."""
        try:
            client = self._client()
            leftovers = client.networks.list(filters={"label": [f"{k}={v}" for k, v in self._labels().items()]})
        except (RuntimeUnavailable, DockerException, OSError) as e:
            log.warning("could not list old job networks: %s", e)
            return 0
        removed = 0
        with self._lock:
            for network in leftovers:
                if self._users.get(network.name):
                    continue
                try:
                    self._drop(network)
                    removed += 1
                except (DockerException, OSError) as e:
                    log.warning("could not remove the job network %s: %s", network.name, docker_reason(e))
        return removed

    def _ensure(self, name: str, job_id: int) -> None:
        try:
            client = self._client()
            try:
                client.networks.get(name)
                return
            except NotFound:
                pass
            labels = {"peergrid": "1", **self._labels(), "peergrid.job": str(job_id)}
            try:
                client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
            except APIError as e:
                if e.status_code != 409:  # another run made it meanwhile: it is there
                    raise
        except RuntimeUnavailable as e:
            raise ContainerFailed(str(e)) from e
        except (DockerException, OSError) as e:
            reason = docker_reason(e)
            if "address pool" in reason:
                # Docker's default pools hold about 30 networks: one per job running on this node.
                reason += (" (the engine has no address range left for another network: give it more in "
                           "default-address-pools of /etc/docker/daemon.json, or run fewer jobs at once)")
            raise ContainerFailed(f"Docker could not make the job's network {name}: {reason}") from e

    def _drop(self, network) -> None:
        if (member := self._member()) is not None:
            try:
                network.disconnect(member, force=True)
            except APIError:
                pass  # it never joined this one
        network.remove()

    def _remove(self, name: str) -> None:
        try:
            self._drop(self._client().networks.get(name))
        except NotFound:
            pass
        except (RuntimeUnavailable, DockerException, OSError) as e:
            # Left for the next start of the worker, which removes what carries its labels.
            log.warning("could not remove the job network %s: %s", name, docker_reason(e))
