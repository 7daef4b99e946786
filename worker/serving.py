"""Serving the ports this node's ops expose: their networks, the tunnels to the gateways, their health checks."""

from __future__ import annotations

import logging
from typing import Callable

from protocol.messages import Registration, WorkOrder
from protocol.services import GatewayRef, HealthReport
from worker.client import NodeClient
from worker.errors import ServerError, WorkerError
from worker.gateways import Gateways
from worker.health import HealthMonitor
from worker.logs import LogShipper
from worker.networks import JobNetworks
from worker.reach import LOOPBACK, jobs_network
from worker.runtime import DockerRuntime, Owner
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class Serving:
    """The node's part in serving its ops' exposed ports; every method may be called from any thread."""

    def __init__(self, settings: WorkerSettings, runtime: DockerRuntime, client: Callable[[], NodeClient],
                 owner: Callable[[], Owner]):
        self.settings = settings
        self.runtime = runtime
        # The node's client, asked each time: which node token it carries is settled as the agent runs.
        self._client = client
        # The network job containers run on, settled once the node is known (worker.reach).
        self._jobs_network: str | None = None
        # The tunnels to every live gateway, which carry this node's endpoints; the registration and
        # each heartbeat answer name the gateways.
        self.gateways: Gateways | None = None
        # The networks the ops of one job share here; none with --job-network none.
        self.networks = JobNetworks(lambda: self.runtime.client(), lambda: owner().labels(),
                                    lambda: self.runtime.reach.container)

    @property
    def serves_endpoints(self) -> bool:
        """Whether this node's containers have a network, so the ports they expose can be served."""
        return self.settings.job_network != "none"

    def tunnel_to(self, answer: Registration, token: str) -> None:
        """Open a tunnel to each gateway the registration names (pinning the host key it gives)."""
        if self.gateways is None:
            self.gateways = Gateways(answer.node_id, token)
        if not answer.gateways and self.settings.job_network != "none":
            log.info("the server names no endpoint gateway yet; ops that expose ports are unreachable until one starts")
        self.gateways.follow(answer.gateways)

    def follow(self, gateways: tuple[GatewayRef, ...] | None) -> None:
        """Tunnel to the gateways a heartbeat answer names; None (an older server) keeps the tunnels as they are."""
        if gateways is not None and self.gateways is not None:
            self.gateways.follow(gateways)

    def remove_leftovers(self) -> None:
        """Remove the job networks an earlier run of this node left (once its containers are gone),
        and say so if this node cannot serve endpoints."""
        if self.settings.job_network == "bridge" and (removed := self.networks.remove_leftovers()):
            log.info("removed %d job network(s) left from an earlier run of this node", removed)
        if not self.serves_endpoints:
            log.info("this node cannot serve endpoints: its containers run without a network (--job-network none), "
                     "so ops that expose ports are placed on other nodes; restart it with --job-network bridge to "
                     "serve them")

    def network_of(self, attempt: WorkOrder, cluster: str) -> tuple[str, str | None]:
        """The network the attempt's container runs on, and the job network it holds for it here
        (None when it holds none), which end() releases."""
        if attempt.endpoints and self.settings.job_network == "none":
            raise WorkerError(
                "This node runs containers without a network (--job-network none), so it cannot serve the "
                "op's exposed ports; submit it again and it runs on another node, or restart this worker "
                "with --job-network bridge."
            )
        network = self._network()
        if network == "bridge":
            # The job's own network here, where its ops reach each other by op id and aliases.
            network = self.networks.acquire(cluster, attempt.job_id)
            return network, network
        return network, None

    def _network(self) -> str:
        """The network job containers run on, as asked; for a worker in a container, a network of the
        operator's is joined first (worker.reach); settled on first use."""
        if self.runtime.reach.mode == LOOPBACK:
            return self.settings.job_network
        if self._jobs_network is None:
            self._jobs_network = jobs_network(self.runtime.client(), self.runtime.reach, self.settings.job_network)
        return self._jobs_network

    def monitor(self, attempt: WorkOrder, shipper: LogShipper) -> HealthMonitor | None:
        """The health checks of a service attempt's exposed ports, started; None for an op exposing none."""
        if not attempt.endpoints:
            return None
        monitor = HealthMonitor(
            [e.port for e in attempt.endpoints], attempt.spec.get("expose"),
            lambda report: self._client().health(attempt.id, report),
            interval_s=self.settings.health_interval_s, failures=self.settings.health_failures,
            note=lambda text: shipper.add("system", text), name=f"health-{attempt.id}",
        )
        monitor.start()
        return monitor

    def restarted(self, attempt: WorkOrder, count: int, reason: str) -> None:
        """Tell the server an op with no endpoints was restarted in place (a service's monitor does that)."""
        try:
            self._client().health(attempt.id, HealthReport(restarts=count, reason=reason))
        except ServerError as e:
            log.warning("could not report that attempt %s restarted: %s", attempt.id, e)

    def published(self, attempt: WorkOrder, published: dict[int, tuple[str, int]], shipper: LogShipper,
                  monitor: HealthMonitor | None) -> None:
        """The container runs (again), its ports reached at published: forward them, and check their health."""
        self._forward(attempt, published, shipper)
        if monitor is not None:
            monitor.watch(published)

    def _forward(self, attempt: WorkOrder, published: dict[int, tuple[str, int]], shipper: LogShipper) -> None:
        """Ask the gateway to forward each endpoint of the attempt to where this worker dials its port."""
        for endpoint in attempt.endpoints:
            target = published.get(endpoint.port)
            if target is None:
                shipper.add("system", f"[peergrid] port {endpoint.port} was not published; its endpoint is not served")
            elif self.gateways is None or not self.gateways.open(endpoint.label, endpoint.port, target[1], host=target[0]):
                shipper.add("system", f"[peergrid] no gateway to serve port {endpoint.port} through yet")

    def end(self, attempt: WorkOrder, monitor: HealthMonitor | None, job_network: str | None) -> None:
        """The attempt's container is gone: stop checking its ports, release its job network, close its endpoints."""
        if monitor is not None:
            monitor.stop()
        if job_network is not None:
            self.networks.release(job_network)
        if self.gateways is not None:
            for endpoint in attempt.endpoints:
                self.gateways.close(endpoint.label)

    def stop(self) -> None:
        """Close the tunnels to the gateways."""
        if self.gateways is not None:
            self.gateways.stop()
