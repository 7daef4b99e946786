"""The worker agent: register, heartbeat, take offers it can run, run them, report."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocol.liveness import Liveness
from protocol.messages import (
    MAX_VOLUME_JOBS,
    FinishedReport,
    MarketSpec,
    NodeReport,
    Offer,
    Registration,
    ReleaseReport,
    WorkOrder,
    node_queue,
)
from protocol.services import HealthReport
from protocol.wire import ProtocolError
from worker import __version__
from worker.broker import connect, consume_offers
from worker.client import CLAIM_RETRIES, HEARTBEAT_RETRIES, NodeClient
from worker.archives import file_sha256, input_folder
from worker.capacity import Capacity, share_limits
from worker.delivery import Delivery
from worker.errors import AttemptGone, ServerError, WorkerError
from worker.events import NodeEvents, event_hostname
from worker.gpus import Inventory, probe, simulated_inventory
from worker.images import PrivateImages
from worker.joining import NodeToken, node_token
from worker.logs import LogShipper
from worker.networks import network_aliases
from worker.outbox import Outbox
from worker.health import HealthMonitor
from worker.reach import Reach
from worker.runtime import DockerRuntime, Limits, Machine, Owner, container_spec, restart_policy
from worker.settings import WorkerSettings
from worker.serving import Serving
from worker.volumes import Volumes

log = logging.getLogger(__name__)

# How often the offers loop goes round: it waits a second at most for an offer, or for capacity.
OFFERS_EVERY_S = 1.0
# How long the offers loop may take to reach the broker and first go round, once registered.
CONNECT_WITHIN_S = 30.0


@dataclass
class Running:
    # The claim's answer (its spec and masks stay out of its repr: they carry secret values).
    attempt: WorkOrder
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # Seconds the container may run; the server may extend it while it runs.
    time_limit: float | None = None


class Agent:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        runtime: DockerRuntime | None = None,
        inventory: Inventory | None = None,
    ):
        self.settings = settings
        # Which node token it works with is settled as it runs (worker.joining): it may have to join first.
        self.credential: NodeToken | None = NodeToken(settings.token) if settings.token else None
        self.client = NodeClient(settings.server, settings.token)
        self.runtime = runtime or DockerRuntime(
            settings.docker_host,
            private_images=PrivateImages(settings.data_dir / "private-images.json" if settings.data_dir else None),
            reach=Reach.of(settings.job_reach, settings.worker_container),
        )
        self.inventory = inventory or (
            simulated_inventory(settings.simulate_gpus, seed=settings.name or settings.token[-8:] or platform.node())
            if settings.simulate_gpus
            else probe()
        )
        self.capacity = Capacity(self.inventory.gpus, settings.slots, simulated=self.inventory.simulated)
        # The engine's machine, asked once it answers: each container's share is of it.
        self._machine: Machine | None = None
        self.draining = False
        # Set by a first Ctrl-C (drain): take nothing new, and stop once what runs has ended.
        self.leaving = False
        # Set to stop: what still runs is given back to the server, unfinished, to be offered again.
        self.stopping = threading.Event()
        self._stop_reason = "its worker was stopped"
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, Running] = {}
        self._markets: tuple[MarketSpec, ...] = ()
        self.registration: Registration | None = None
        # The node of the cluster this worker is, known once registered: what it makes carries both.
        self.owner: Owner | None = None
        self.broker_url: str | None = None
        self.heartbeat_interval_s = 10.0
        # Attempts this agent has run to an end since it started, for monitors.
        self.processed = 0
        self.events: NodeEvents | None = None
        # The jobs' volumes this node holds (worker.volumes).
        self.volumes = Volumes(self.runtime, lambda: self.owner, self._busy_jobs)
        # Outcomes the server has not taken yet, and their delivery (worker.delivery).
        self.outbox = Outbox(settings.data_dir / "outbox" if settings.data_dir else None)
        self.delivery = Delivery(self.outbox, lambda: self.client, on_next=self._handed, taking=self._taking)
        # Work the server handed over with a finished report's answer, claimed for this node, waiting
        # for the GPUs the ended attempt still holds here to be let go.
        self._next: list[WorkOrder] = []
        # The health file, which the heartbeat and offers loops beat once registered; and since when
        # the server has not answered a heartbeat (time.time(); None while it answers).
        self.liveness = Liveness(settings.health_file)
        self._unanswered_since: float | None = None
        # The job networks and gateway tunnels that serve the ports its ops expose (worker.serving).
        self.serving = Serving(settings, self.runtime, lambda: self.client, lambda: self.owner)

    # -- what the node tells the server ------------------------------------------------------

    @property
    def node_id(self) -> int | None:
        return self.registration.node_id if self.registration else None

    def _gpu_reports(self) -> list:
        if not self.inventory.simulated and self.inventory.gpus:
            fresh = probe()  # memory, utilisation and temperature change; send them each time
            if fresh.gpus:
                self.inventory = fresh
        held = self.capacity.holders()
        reports = []
        for gpu in self.inventory.gpus:
            report = gpu.as_report()
            if self.inventory.simulated and gpu.uuid in held:
                report = replace(report, utilization_pct=100, memory_free_mb=0)
            reports.append(report)
        return reports

    def report(self) -> NodeReport:
        with self._lock:
            # Work handed over but not started yet is this node's as much as what runs.
            running = sorted({*self._running, *(order.id for order in self._next)})
        # Read after what runs: an attempt's outcome is kept before it stops running, so an attempt
        # that ends meanwhile is in one list or the other, never in neither.
        undelivered = self.outbox.held()
        return NodeReport(
            hostname=platform.node(),
            agent_version=__version__,
            cpu_count=os.cpu_count() or 1,
            memory_mb=_memory_mb(),
            slots=self.settings.slots,
            simulated=self.inventory.simulated,
            gpu_message=self.inventory.message,
            gpus=tuple(self._gpu_reports()),
            running=tuple(running),
            undelivered=tuple(undelivered),
            # The rest wait for later heartbeats.
            volume_jobs=tuple(self.volumes.jobs[:MAX_VOLUME_JOBS]),
            serves_endpoints=self.serving.serves_endpoints,
        )

    def authenticate(self) -> bool:
        """Settle the node token: the one given, the one an earlier join saved, or a new one got by
        joining (waiting for the server). False when stopped meanwhile."""
        if self.credential is None:
            self.credential = node_token(self.settings, stopping=self.stopping)
            if self.credential is None:
                return False
            self.client = NodeClient(self.settings.server, self.credential.token)
        return True

    def register(self) -> None:
        """Register with the server, waiting for it to come up; first deliver the outcomes an
        earlier run kept, since registering gives up whatever the node held."""
        if not self.authenticate():
            return
        delay = 1.0
        while not self.stopping.is_set():
            try:
                if self.delivery.deliver_outbox():
                    answer = self.client.register(self.report())
                    break
                log.warning("cannot deliver the outcomes of attempts %s yet; registering once the server takes them",
                            ", ".join(map(str, self.outbox.held())))
            except ServerError as e:
                if e.status is not None and e.status < 500:
                    refused = self.credential.refused(e)
                    if refused is e:
                        raise
                    raise refused from e
                log.warning("cannot register yet: %s", e)
            self.stopping.wait(delay)
            delay = min(delay * 2, 15)
        else:
            return
        self.registration = answer
        self.owner = Owner(answer.cluster_id, answer.node_id)
        self.draining = answer.node_state == "draining"
        self.broker_url = answer.broker_url
        self._markets = answer.markets
        self.heartbeat_interval_s = answer.heartbeat_interval_s
        log.info("registered as node %s (%s) of cluster %s", answer.node_name, answer.node_id, answer.cluster_id)
        self.serving.tunnel_to(answer, self.credential.token)
        removed = self.runtime.remove_leftovers(self.owner)
        if removed:
            log.info("removed %d container(s) left from an earlier run of this node", removed)
        self.serving.remove_leftovers()
        self.volumes.sweep([])  # volumes an earlier run left are found by their labels

    # -- capacity ----------------------------------------------------------------------------

    def servable(self) -> list[MarketSpec]:
        """The markets whose ops this node can run with what is free now."""
        if self.draining or self.leaving or self.stopping.is_set():
            return []
        return [m for m in self._markets if self.capacity.can_serve(m)]

    def can_take(self) -> bool:
        return bool(self.servable())

    def queues(self) -> list[str]:
        """The queues to take offers from now: the node's own, where the scheduler places its work,
        while anything is free."""
        return [node_queue(self.node_id)] if self.servable() else []

    # -- offers and runs ---------------------------------------------------------------------

    def on_offer(self, body: dict, message) -> None:
        try:
            offer = Offer.from_wire(body)
        except ProtocolError as e:
            log.warning("dropping an offer this worker cannot read (%s): %r", e, body)
            message.ack()
            return
        attempt_id = offer.attempt_id
        market = next((m for m in self._markets if m.slug == offer.market), None)
        if market is None:
            log.warning("dropping an offer of market %r, which this worker does not know", offer.market)
            message.ack()
            return
        gpus = self.capacity.reserve_exact(attempt_id, offer.gpus, market)
        if gpus is None:
            # What it was placed on is still held here by an attempt whose end the server has heard
            # of first, or was never this node's: leave it, claimed by no one; the server withdraws
            # an offer left unclaimed and places it again.
            log.info("attempt %s was placed on GPUs this node does not have free; leaving it", attempt_id)
            message.ack()
            return
        # The offers loop waits on the server while it claims: a slow server is not this loop's sickness.
        self.liveness.beat("offers", self.client.longest_s(CLAIM_RETRIES), f"claiming attempt {attempt_id}")
        try:
            answer = self.client.claim(attempt_id, gpus=[g.uuid for g in gpus])
        except AttemptGone:
            self.capacity.release(attempt_id)
            message.ack()  # someone else won, or it was cancelled
            return
        except ServerError as e:
            self.capacity.release(attempt_id)
            log.warning("could not claim attempt %s: %s", attempt_id, e)
            message.ack()  # the server re-offers attempts left unclaimed
            return
        message.ack()
        if answer.order is None:
            # The server refused to hand the op over after all (a secret it needs is gone) and has
            # recorded why.
            self.capacity.release(attempt_id)
            log.warning("attempt %s cannot run; the server failed it and its job's events say why", attempt_id)
            return
        self.start(answer.order)

    def _taking(self) -> bool:
        """Whether this node takes more work now: registered, and not draining, leaving or stopping."""
        return self.registration is not None and not (self.draining or self.leaving or self.stopping.is_set())

    def _handed(self, orders: tuple[WorkOrder, ...]) -> None:
        """Take the next work a finished report's answer carried; it starts once its GPUs are free here."""
        if self.registration is None:
            # Outcomes of an earlier run, delivered before registering, which gives up whatever was handed.
            return
        if not self._taking():
            # Handed over as this node began to drain or stop: give it back, to be placed elsewhere.
            for order in orders:
                try:
                    self.client.release(order.id, ReleaseReport(reason="its worker takes no more work"))
                except ServerError as e:
                    log.warning("could not give back attempt %s (the server takes it back later): %s", order.id, e)
            return
        with self._lock:
            self._next.extend(orders)
        self._start_handed()

    def _start_handed(self) -> None:
        """Start each handed order whose GPUs (or CPU slot) are free here now."""
        with self._lock:
            waiting, self._next = self._next, []
        for order in waiting:
            market = next((m for m in self._markets if m.slug == order.market), None)
            if market is None or self.capacity.reserve_exact(order.id, order.gpus, market) is None:
                with self._lock:
                    self._next.append(order)
                continue
            log.info("starting attempt %s, handed over with the last one's end", order.id)
            self.start(order)

    def start(self, attempt: WorkOrder) -> None:
        run = Running(attempt, time_limit=attempt.timeout_s)
        run.thread = threading.Thread(target=self._execute, args=(run,), name=f"attempt-{attempt.id}", daemon=True)
        with self._lock:
            self._running[attempt.id] = run
        run.thread.start()

    def _execute(self, run: Running) -> None:
        attempt = run.attempt
        attempt_id = attempt.id
        ids = {"job": attempt.job_id, "op": attempt.op, "attempt": attempt_id, "node": self.node_id}
        log.info("running attempt %s (job %s, op %s)", attempt_id, attempt.job_id, attempt.op, extra=ids)
        shipper = LogShipper(self.client, attempt_id, interval_s=self.settings.log_interval_s, redact=attempt.redact)

        def started() -> None:
            try:
                self.client.started(attempt_id)
            except AttemptGone:
                shipper.gone.set()
            except ServerError as e:
                log.warning("could not report attempt %s started: %s", attempt_id, e)

        scratch = Path(tempfile.mkdtemp(prefix=f"peergrid-{attempt_id}-"))
        job_network: str | None = None
        monitor: HealthMonitor | None = None
        try:
            labels = {**self.owner.labels(), "peergrid.attempt": str(attempt_id), "peergrid.job": str(attempt.job_id)}
            if "create_volume" in attempt.spec:
                started()
                outcome = self.volumes.create(attempt.job_id, attempt.spec["create_volume"], labels)
                if outcome.error is None:
                    shipper.add("system", f"[peergrid] volume {attempt.spec['create_volume']} is ready")
                self._report(run, shipper, outcome.exit_code, outcome.error)
                return
            network, job_network = self.serving.network_of(attempt, self.owner.cluster)
            spec = container_spec(
                attempt.spec,
                network=network,
                aliases=network_aliases(attempt.op, attempt.spec.get("aliases")) if network != "none" else (),
                ports=tuple(e.port for e in attempt.endpoints),
                cluster=self.owner.cluster,
                job_id=attempt.job_id,
                attempt=attempt.number,
                labels=labels,
                gpus=list(attempt.gpus),
                simulated_gpus=self.inventory.simulated,
                limits=self._limits(len(attempt.gpus)),
            )
            inputs = self._fetch_inputs(attempt, scratch, shipper)
            monitor = self.serving.monitor(attempt, shipper)
            outcome = self.runtime.run(
                spec,
                shipper.add,
                time_limit=lambda: run.time_limit,
                should_stop=lambda: run.cancel.is_set() or shipper.gone.is_set() or self.stopping.is_set(),
                on_started=started,
                on_published=lambda published: self.serving.published(attempt, published, shipper, monitor),
                stop_grace_s=self.settings.stop_grace_s,
                inputs=inputs,
                output_archive=scratch / "output.tar.gz",
                restart=restart_policy(attempt.spec),
                should_restart=monitor.restart_wanted if monitor else lambda: None,
                on_restarting=(monitor.restarting if monitor
                               else lambda count, why: self.serving.restarted(attempt, count, why)),
            )
            # Its container is gone: what it held is free here for the work the report's answer hands over.
            self.capacity.release(attempt_id)
            if outcome.stopped and self.stopping.is_set() and not (run.cancel.is_set() or shipper.gone.is_set()):
                self._give_back(run, shipper)
                return
            self._report(run, shipper, outcome.exit_code, outcome.error, artifact=outcome.artifact)
        except Exception as e:
            if isinstance(e, WorkerError):
                message = str(e)
            else:
                log.exception("attempt %s crashed in the worker", attempt_id)
                message = "The worker failed while running the op."
            shipper.add("system", f"[peergrid] {message}")
            self.delivery.conclude(attempt_id, shipper, FinishedReport(exit_code=None, error=message),
                                   cancel=run.cancel)
        finally:
            self.serving.end(attempt, monitor, job_network)  # its container is gone by now
            shutil.rmtree(scratch, ignore_errors=True)
            self.capacity.release(attempt_id)
            with self._lock:
                self._running.pop(attempt_id, None)
                self.processed += 1
            self._start_handed()
            self._changed.set()

    def _report(
        self, run: Running, shipper: LogShipper, exit_code: int | None, error: str | None, *, artifact: Path | None = None
    ) -> None:
        """Report how the attempt ended, with its last log lines and output, unless it is no longer ours."""
        attempt_id = run.attempt.id
        if error:
            error = shipper.mask(error)
            shipper.add("system", f"[peergrid] {error}")
        if not (run.cancel.is_set() or shipper.gone.is_set()):
            ids = {"job": run.attempt.job_id, "op": run.attempt.op, "attempt": attempt_id, "node": self.node_id}
            log.info("attempt %s ended: exit code %s%s", attempt_id, exit_code, f", {error}" if error else "", extra=ids)
        self.delivery.conclude(attempt_id, shipper, FinishedReport(exit_code=exit_code, error=error),
                               cancel=run.cancel, artifact=artifact)

    def _give_back(self, run: Running, shipper: LogShipper) -> None:
        """Tell the server an attempt stopped unfinished because this worker is stopping."""
        attempt_id = run.attempt.id
        shipper.add("system", f"[peergrid] Given back unfinished: {self._stop_reason}. It is offered again.")
        log.info("giving back attempt %s unfinished: %s", attempt_id, self._stop_reason,
                 extra={"job": run.attempt.job_id, "op": run.attempt.op, "attempt": attempt_id, "node": self.node_id})
        self.delivery.conclude(attempt_id, shipper, ReleaseReport(reason=self._stop_reason), cancel=run.cancel)

    def _limits(self, gpus: int) -> Limits:
        """A container's limits: what the provider set, else its op's share of the machine."""
        if self._machine is None:
            self._machine = self.runtime.machine()
        machine = self._machine or Machine(memory_mb=_memory_mb(), cpus=os.cpu_count() or 1)
        return share_limits(
            machine, gpus=gpus, gpu_total=len(self.inventory.gpus), slots=self.settings.slots,
            memory_mb=self.settings.memory_limit_mb, cpus=self.settings.cpu_limit, pids=self.settings.pids_limit,
        )

    def _fetch_inputs(self, attempt: WorkOrder, scratch: Path, shipper: LogShipper) -> dict[str, Path]:
        inputs = {}
        for parent in attempt.inputs:
            dest = scratch / f"input-{input_folder(parent.op)}.tar.gz"
            self.client.download_input(attempt.id, parent.op, dest)
            if file_sha256(dest) != parent.sha256:
                raise WorkerError(f"The output of {parent.op} arrived damaged.")
            inputs[parent.op] = dest
        if inputs:
            shipper.add("system", f"[peergrid] inputs from {', '.join(sorted(inputs))} are under /inputs/")
        return inputs

    # -- liveness ----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        # A turn waits the interval, then for the server's answer for as long as a heartbeat may take
        # when the server does not answer: an outage of the server is not this worker's sickness.
        every_s = self.heartbeat_interval_s + self.client.longest_s(HEARTBEAT_RETRIES)
        while True:
            self.liveness.beat("heartbeat", every_s, self._unanswered())
            if self.stopping.wait(self.heartbeat_interval_s) or not self._heartbeat():
                return

    def _unanswered(self) -> str | None:
        since = self._unanswered_since
        return None if since is None else f"server unreachable since {time.strftime('%H:%M:%S UTC', time.gmtime(since))}"

    def _heartbeat(self) -> bool:
        """Send one heartbeat and do what the answer says; False when the server refuses this node."""
        try:
            answer = self.client.heartbeat(self.report())
        except ServerError as e:
            if e.status in (401, 403):
                log.error("the server refuses this node: %s; stopping", self.credential.refused(e))
                self.stop()
                return False
            log.warning("heartbeat failed: %s", e)
            if self._unanswered_since is None:
                self._unanswered_since = time.time()
            return True
        self._unanswered_since = None
        draining = answer.state == "draining"
        if draining != self.draining:
            log.info("node is %s", "draining: finishing what runs, taking nothing new" if draining else "taking work again")
            self.draining = draining
            self._changed.set()
        for attempt_id, limit in answer.time_limits.items():
            with self._lock:
                run = self._running.get(attempt_id)
            if run is not None and limit != run.time_limit:
                log.info("attempt %s may now run for %s s", attempt_id, limit)
                run.time_limit = limit
        for attempt_id in answer.cancel:
            with self._lock:
                run = self._running.get(attempt_id)
            if run is not None:
                log.info("server cancelled attempt %s; stopping its container", attempt_id)
                run.cancel.set()
        self.serving.follow(answer.gateways)
        # Aside from the heartbeats, so an engine slow to answer cannot make the node look silent.
        ended = list(answer.ended_jobs)
        threading.Thread(target=self.volumes.sweep, args=(ended,), name="volumes", daemon=True).start()
        return True

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> None:
        if not self.authenticate():
            return
        problem = self.runtime.check()
        if problem:
            log.warning("%s Ops it takes will fail until then.", problem)
        self.register()
        if self.stopping.is_set():
            return
        # Both loops count against health until each has gone round once.
        self.liveness.expect("heartbeat", self.heartbeat_interval_s)
        self.liveness.expect("offers", OFFERS_EVERY_S + CONNECT_WITHIN_S)
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.delivery.send_until, args=(self.stopping, min(self.heartbeat_interval_s, 5.0)),
                         name="outbox", daemon=True).start()
        if self.settings.events:
            self.events = NodeEvents(
                self.broker_url, event_hostname(self.registration.node_name), freq=self.heartbeat_interval_s, load=self.load
            )
            self.events.start()
        connection = connect(self.broker_url, poll_interval_s=self.settings.poll_interval_s)
        try:
            consume_offers(
                connection,
                self.queues,
                self.on_offer,
                can_take=self.can_take,
                stopping=self.stopping.is_set,
                idle_wait=self._idle_wait,
                beat=lambda: self.liveness.beat("offers", OFFERS_EVERY_S),
            )
        finally:
            connection.release()
            self._wait_for_runs()
            if self.events is not None:
                self.events.stop()
            self.serving.stop()

    def load(self) -> dict:
        """Count the attempts running now and those run to an end, as Celery's worker events name them."""
        with self._lock:
            return {"active": len(self._running), "processed": self.processed}

    def _idle_wait(self, seconds: float) -> None:
        self._changed.wait(seconds)
        self._changed.clear()

    def stop(self, reason: str = "its worker was stopped") -> None:
        """Stop now: what runs is stopped and given back, to be offered again at once."""
        if not self.stopping.is_set():
            self._stop_reason = reason
        self.stopping.set()
        self._changed.set()

    def drain(self, timeout_s: float) -> None:
        """Take nothing new and let what runs finish, then stop; give back what still runs after
        timeout_s. Returns at once."""
        if self.leaving or self.stopping.is_set():
            return
        self.leaving = True
        self._changed.set()
        threading.Thread(target=self._leave, args=(timeout_s,), name="drain", daemon=True).start()

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def _busy_jobs(self) -> set[int]:
        """The jobs with an attempt running here."""
        with self._lock:
            return {run.attempt.job_id for run in self._running.values()}

    def _leave(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.stopping.is_set():
            if not self.running_count():
                log.info("drained: nothing runs any more; stopping")
                self.stop()
                return
            if time.monotonic() >= deadline:
                log.info("the drain limit of %g s passed; giving back what still runs", timeout_s)
                self.stop(f"its worker's drain limit of {timeout_s:g} s passed")
                return
            self.stopping.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def _wait_for_runs(self, timeout: float = 60.0) -> None:
        """Wait for running attempts to stop and report."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [r.thread for r in self._running.values() if r.thread]
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))


def _memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return 0
