"""The gateway as a unit: its SSH server and HTTP front on one asyncio loop, what it holds, and
what it asks of the store (in threads, so a slow store never stalls the loop)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from functools import partial
from pathlib import Path

import asyncssh

from gateway.access import Access
from gateway.front import MAX_HEAD, answer, serve
from gateway.tunnels import Forward, Forwards, NodeLogin
from scheduler.core import Core
from scheduler.endpoints import (
    LABEL,
    announce_gateway,
    authorise_forward,
    mark_forwarded,
    mark_unforwarded,
    node_for_login,
    open_endpoint,
    renew_gateway,
    still_open,
    withdraw_gateway,
)
from scheduler.errors import PeergridError
from scheduler.services import readiness_changed
from scheduler.settings import Settings

log = logging.getLogger(__name__)

# How often the gateway drops the forwards of endpoints that have closed.
SWEEP_EVERY_S = 1.0
# How many times within its lease a gateway renews it.
RENEWALS_PER_LEASE = 5


def host_key(folder: Path) -> asyncssh.SSHKey:
    """The gateway's SSH host key, kept in folder; made on first start."""
    path = folder / "ssh_host_ed25519_key"
    if path.exists():
        return asyncssh.read_private_key(str(path))
    folder.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    fresh = path.with_suffix(".new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    fresh.replace(path)
    return key


class Gateway:
    """The endpoint gateway; start() and stop() it on a running loop."""

    def __init__(self, core: Core, settings: Settings | None = None, *, ssh_port: int | None = None,
                 http_port: int | None = None):
        self.core = core
        self.settings = settings or core.settings
        self.name = self.settings.gateway_name
        self._ssh_port = self.settings.gateway_ssh_port if ssh_port is None else ssh_port
        self._http_port = self.settings.gateway_port if http_port is None else http_port
        self.forwards = Forwards()
        self.access = Access(self)
        self._ssh: asyncssh.SSHAcceptor | None = None
        self._http: asyncio.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self.key: asyncssh.SSHKey | None = None
        # Nodes' SSH connections now open; stopping the acceptor leaves them open, so stop() closes them.
        self.connections: set[asyncssh.SSHServerConnection] = set()
        # Store writes under way, held so the loop does not lose them.
        self._writes: set[asyncio.Task] = set()
        # Its lease in the store (scheduler.endpoints.renew_gateway), and when it was last renewed (loop time).
        self.lease_s = self.settings.gateway_lease_s
        self._announce = None
        self._renewed = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        host = self.settings.gateway_host
        self.key = host_key(self.settings.data_dir / "gateway")
        self._ssh = await asyncssh.create_server(
            partial(NodeLogin, self), host, self._ssh_port, server_host_keys=[self.key],
            # Nodes carry their endpoints' traffic and nothing else: no agent, no X11, no shell.
            agent_forwarding=False, x11_forwarding=False, allow_scp=False, keepalive_interval=15,
        )
        self._http = await asyncio.start_server(partial(serve, self), host, self._http_port, limit=MAX_HEAD)
        address = self.settings.gateway_ssh_address
        if self._ssh_port == 0 or address.endswith(":0"):
            address = f"{address.rsplit(':', 1)[0]}:{self.ssh_port}"
        public = self.key.export_public_key().decode().strip()
        self._announce = lambda s: announce_gateway(s, self.name, address, public, lease_s=self.lease_s)
        await self._store(self._announce)
        self._renewed = asyncio.get_running_loop().time()
        self.core.liveness.expect("gateway", SWEEP_EVERY_S)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("gateway %s serves endpoints on http://%s:%s and takes tunnels on %s:%s (workers dial %s)",
                 self.name, host, self.http_port, host, self.ssh_port, address)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._http is not None:
            self._http.close()
        if self._ssh is not None:
            self._ssh.close()
            await self._ssh.wait_closed()
        for connection in list(self.connections):
            connection.close()
        for connection in list(self.connections):
            await connection.wait_closed()
        if self._http is not None:
            await self._http.wait_closed()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._announce is not None:
            # Its forwards stop counting now, and workers stop tunnelling here at their next heartbeat.
            await self._store(lambda s: withdraw_gateway(s, self.name))

    @property
    def ssh_port(self) -> int:
        return self._ssh.get_port() if self._ssh else self._ssh_port

    @property
    def http_port(self) -> int:
        return self._http.sockets[0].getsockname()[1] if self._http else self._http_port

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        try:
            await stopping.wait()
        finally:
            await self.stop()

    # -- the store ---------------------------------------------------------------------------

    async def _store(self, work):
        """Run work(session) in one transaction on a thread; return what it returns."""

        def run():
            with self.core.transaction() as session:
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def login(self, username: str, password: str) -> int | None:
        """The id of the node this login is, or None."""
        try:
            return await self._store(lambda s: node_for_login(s, username, password).id)
        except PeergridError:
            return None

    async def authorise(self, node_id: int, label: str, port: int, connection) -> Forward | None:
        """Accept node_id's forward of endpoint label on port if the store says it holds it now."""
        if not LABEL.fullmatch(label):
            log.info("refused node %s a forward of %r: not an endpoint's label", node_id, label[:40])
            return None

        def check(session):
            endpoint = authorise_forward(session, node_id, label, port)
            mark_forwarded(session, label, self.name)
            readiness_changed(session, endpoint.op)
            return endpoint.private

        try:
            private = await self._store(check)
        except PeergridError as e:
            log.info("refused node %s a forward of %s:%s: %s", node_id, label, port, e)
            return None
        except Exception as e:  # the store is unreachable, or a race; the node asks again shortly
            log.warning("could not accept node %s's forward of %s:%s just now: %s", node_id, label, port, e)
            return None
        forward = Forward(label=label, port=port, node_id=node_id, private=private, connection=connection)
        self.forwards.add(forward)
        log.info("node %s forwards endpoint %s (port %s)", node_id, label, port)
        return forward

    def forget(self, label: str, connection) -> None:
        """The node cancelled label's forward."""
        if self.forwards.drop(label, connection):
            log.info("endpoint %s is no longer forwarded", label)
            self._write(self._unmark([label]))

    def forget_connection(self, connection) -> None:
        """A node's tunnel closed: every forward it carried goes."""
        self.connections.discard(connection)
        labels = self.forwards.of(connection)
        for label in labels:
            self.forwards.drop(label, connection)
        if labels:
            self._write(self._unmark(labels))

    def _write(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _unmark(self, labels: list[str]) -> None:
        try:
            await self._store(lambda s: mark_unforwarded(s, labels, self.name))
        except Exception as e:  # the sweep and the next start set the store right
            log.warning("could not record that endpoints %s are no longer forwarded: %s", ", ".join(labels), e)

    async def refusal(self, label: str | None) -> bytes:
        """The answer for a request no forward serves: 404 for no such open endpoint, 503 while its tunnel is down."""
        if label is None or not LABEL.fullmatch(label):
            return answer(404, "Not Found", "This gateway serves endpoints at http://ENDPOINT.DOMAIN/; this address names none.")
        try:
            endpoint_open = await self._store(lambda s: open_endpoint(s, label) is not None)
        except Exception as e:
            log.warning("could not look endpoint %s up: %s", label, e)
            return answer(503, "Service Unavailable", "The gateway cannot reach its store just now; try again shortly.")
        if endpoint_open:
            return answer(503, "Service Unavailable",
                          "This endpoint's service is starting or its node's tunnel is down; try again shortly.")
        return answer(404, "Not Found", "There is no such endpoint, or its op has ended.")

    async def _sweep(self) -> None:
        """Drop the forwards of endpoints that have closed (their attempts ended); each turn beats
        loop `gateway` in the health file, since it is a turn of the loop that serves everything."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.core.liveness.beat("gateway", SWEEP_EVERY_S, f"{len(self.forwards.labels())} forward(s)")
            await self._renew()
            labels = self.forwards.labels()
            if not labels:
                continue
            try:
                live = await self._store(lambda s: still_open(s, labels))
            except Exception as e:
                log.warning("could not check which endpoints are still open: %s", e)
                continue
            for label in labels:
                if label not in live and self.forwards.drop(label):
                    log.info("endpoint %s closed; dropped its forward", label)


    async def _renew(self) -> None:
        """Renew the lease when it is due; announce the gateway again if the store has lost it."""
        now = asyncio.get_running_loop().time()
        if now - self._renewed < self.lease_s / RENEWALS_PER_LEASE:
            return
        try:
            held = self.forwards.labels()
            if not await self._store(lambda s: renew_gateway(s, self.name, held, lease_s=self.lease_s)):
                log.warning("the store no longer knew gateway %s as running; announcing it again", self.name)
                labels = self.forwards.labels()

                def again(session):
                    self._announce(session)
                    for label in labels:
                        mark_forwarded(session, label, self.name)

                await self._store(again)
        except Exception as e:  # its lease runs out if this lasts; workers come back when it renews
            log.warning("could not renew gateway %s's lease: %s", self.name, e)
            return
        self._renewed = now


def run_gateway(settings: Settings) -> None:
    """Run `peergrid gateway` until signalled."""
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    core = Core.from_settings(settings)
    try:
        asyncio.run(Gateway(core).serve_until_signalled())
    finally:
        core.close()
