"""The node's tunnels to every live gateway: one Tunnel per gateway the server names, each asked
to forward every endpoint the node serves now, so that any gateway (behind DNS round-robin or a
load balancer) serves any of them and one gateway going away loses nothing. The registration and
every heartbeat answer carry the list of live gateways; follow() keeps the tunnels in step."""

from __future__ import annotations

import logging
import threading

from protocol.services import GatewayRef
from worker.tunnel import Tunnel

log = logging.getLogger(__name__)


class Gateways:
    """Tunnels to the gateways the server names; every method may be called from any thread."""

    def __init__(self, node_id: int, token: str):
        self._node_id = node_id
        self._token = token
        self._lock = threading.Lock()
        # name → (what the server said of it, the tunnel to it).
        self._tunnels: dict[str, tuple[GatewayRef, Tunnel]] = {}
        # label → (container port, loopback port the engine publishes it on): what every tunnel forwards.
        self._wanted: dict[str, tuple[int, int, str]] = {}

    def follow(self, gateways: tuple[GatewayRef, ...]) -> None:
        """Tunnel to exactly these gateways: open tunnels to new ones (forwarding every endpoint
        served now), close those to gateways no longer named, and redial one whose address or key changed."""
        named = {g.name: g for g in gateways}
        started, stopped = [], []
        with self._lock:
            for name, (ref, tunnel) in list(self._tunnels.items()):
                if named.get(name) != ref:
                    del self._tunnels[name]
                    stopped.append((ref, tunnel))
            for name, ref in named.items():
                if name in self._tunnels:
                    continue
                try:
                    tunnel = Tunnel(ref.ssh, ref.host_key, self._node_id, self._token)
                except ValueError as e:  # asyncssh.KeyImportError, and a bad address
                    log.error("the host key of gateway %s from the server cannot be read (%s); it will not serve "
                              "this node's endpoints", name, e)
                    continue
                for label, (port, target, host) in self._wanted.items():
                    tunnel.open(label, port, target, host=host)
                self._tunnels[name] = (ref, tunnel)
                started.append((ref, tunnel))
        for ref, tunnel in started:
            log.info("tunnelling endpoints to gateway %s at %s", ref.name, ref.ssh)
            tunnel.start()
        for ref, tunnel in stopped:
            log.info("gateway %s at %s is gone from the server's list; closing the tunnel to it", ref.name, ref.ssh)
            # A tunnel waiting on an unreachable gateway may take a while to stop; the caller does not wait.
            threading.Thread(target=tunnel.stop, name=f"tunnel-stop-{ref.name}", daemon=True).start()

    def open(self, label: str, port: int, target_port: int, host: str = "127.0.0.1") -> bool:
        """Forward endpoint label (container port `port`) to target_port on host (where this worker
        dials it: worker.reach) through every gateway; False if there is no gateway to forward it
        through (it is forwarded when one appears)."""
        with self._lock:
            self._wanted[label] = (port, target_port, host)
            tunnels = [tunnel for _, tunnel in self._tunnels.values()]
        for tunnel in tunnels:
            tunnel.open(label, port, target_port, host=host)
        return bool(tunnels)

    def close(self, label: str) -> None:
        """Stop forwarding endpoint label through every gateway."""
        with self._lock:
            self._wanted.pop(label, None)
            tunnels = [tunnel for _, tunnel in self._tunnels.values()]
        for tunnel in tunnels:
            tunnel.close(label)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tunnels)

    def tunnel(self, name: str) -> Tunnel | None:
        with self._lock:
            held = self._tunnels.get(name)
        return held[1] if held else None

    def forwarded_by(self, label: str) -> list[str]:
        """The gateways that hold label's forward now, as this side knows it."""
        with self._lock:
            return sorted(name for name, (_, tunnel) in self._tunnels.items() if label in tunnel.forwarded)

    def stop(self) -> None:
        with self._lock:
            tunnels = [tunnel for _, tunnel in self._tunnels.values()]
            self._tunnels.clear()
        for tunnel in tunnels:
            tunnel.stop()
