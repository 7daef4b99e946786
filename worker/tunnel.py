"""The node's tunnel to its gateway: one SSH connection, on an asyncio loop of its own in a
thread, that asks the gateway for a remote forward of each endpoint the node serves now and
carries each forwarded connection to the container port behind it. It reconnects with backoff,
and asks again for every forward, whenever the connection drops."""

from __future__ import annotations

import asyncio
import logging
import threading

import asyncssh

log = logging.getLogger(__name__)

# Backoff between connection tries, in seconds.
FIRST_RETRY_S = 1.0
LAST_RETRY_S = 15.0
# How often forwards the gateway refused are asked for again.
RETRY_REFUSED_S = 5.0
# AES-GCM first: one call into OpenSSL a packet, where chacha20-poly1305 (asyncssh's first choice)
# builds three ChaCha20 contexts and a Poly1305 tag; that was a third of the gateway's CPU for each
# request it passed, and the tunnel's likewise (bench/endpoints.py).
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Tunnel:
    """Forwards of this node's endpoints to its gateway; open() and close() may be called from any thread."""

    def __init__(self, address: str, host_key: str, node_id: int, token: str):
        self.address = address
        # Pinned: the gateway's key as the server said at registration; any other is refused.
        self._host_key = asyncssh.import_public_key(host_key)
        self._username = str(node_id)
        self._token = token
        # label → (container port, port and host it is dialled at); what should be forwarded.
        self._wanted: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # What the gateway holds now, as this side knows it (read by tests and the agent's logs).
        self.forwarded: set[str] = set()
        self.connected = threading.Event()

    # -- any thread --------------------------------------------------------------------------

    def start(self) -> None:
        # Its INFO lines name every forwarded connection; this module says what matters in one line.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="tunnel", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stopping.set()
        self._poke()
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def open(self, label: str, port: int, target_port: int, host: str = "127.0.0.1") -> None:
        """Forward endpoint label (container port `port`) to target_port on host: the engine's
        loopback port it is published on, or the container itself (worker.reach.dial_target)."""
        with self._lock:
            self._wanted[label] = (port, target_port, host)
        self._poke()

    def close(self, label: str) -> None:
        """Stop forwarding endpoint label."""
        with self._lock:
            self._wanted.pop(label, None)
        self._poke()

    def _poke(self) -> None:
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    # -- the tunnel's own loop ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._ready.set()
        host, port = parse_address(self.address)
        delay = FIRST_RETRY_S
        while not self._stopping.is_set():
            try:
                async with asyncssh.connect(
                    host, port, username=self._username, password=self._token,
                    known_hosts=([self._host_key], [], []), client_keys=None, agent_path=None,
                    preferred_auth="password", keepalive_interval=15, login_timeout=15, encryption_algs=CIPHERS,
                ) as conn:
                    log.info("tunnel to gateway %s is up", self.address)
                    self.connected.set()
                    delay = FIRST_RETRY_S
                    await self._serve(conn)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
                if not self._stopping.is_set():
                    log.warning("tunnel to gateway %s is down (%s); trying again in %.0f s", self.address,
                                str(e) or type(e).__name__, delay)
            finally:
                self.connected.clear()
                self.forwarded.clear()
            if self._stopping.is_set():
                break
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, LAST_RETRY_S)

    def _dialler(self, conn: asyncssh.SSHClientConnection, label: str):
        """What a forwarded connection of label dials: where its container port is published now,
        which a container restarted in place changes while the gateway's forward stays."""

        def session_factory(_orig_host: str, _orig_port: int):
            with self._lock:
                _, target, host = self._wanted.get(label, (0, 0, "127.0.0.1"))
            return conn.forward_connection(host, target)

        return session_factory

    async def _serve(self, conn: asyncssh.SSHClientConnection) -> None:
        """Keep the gateway's forwards in step with what is wanted until the connection ends."""
        held: dict[str, asyncssh.SSHListener] = {}
        refused: set[str] = set()
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            while not self._stopping.is_set() and not closed.done():
                self._changed.clear()
                with self._lock:
                    wanted = dict(self._wanted)
                for label in [label for label in held if label not in wanted]:
                    held.pop(label).close()
                    self.forwarded.discard(label)
                    log.info("stopped forwarding endpoint %s", label)
                for label, (port, target, target_host) in wanted.items():
                    if label in held:
                        continue
                    try:
                        held[label] = await conn.create_server(self._dialler(conn, label), label, port)
                    except asyncssh.ChannelListenError as e:
                        if label not in refused:
                            log.warning("the gateway refused to forward endpoint %s: %s", label, e)
                        refused.add(label)
                        continue
                    refused.discard(label)
                    self.forwarded.add(label)
                    log.info("forwarding endpoint %s (port %s) from the gateway to %s:%s", label, port, target_host, target)
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({changed, closed}, timeout=RETRY_REFUSED_S if refused else None,
                                   return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
        finally:
            closed.cancel()
