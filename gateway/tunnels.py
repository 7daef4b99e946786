"""The SSH side of the gateway: nodes log in with their node token and ask for remote forwards of
their endpoints, which are accepted only for attempts the node holds now. No socket is ever opened
for a forward: the HTTP front opens a forwarded-tcpip channel back to the node per connection."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncssh

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forward:
    """A forward the gateway holds: the node's connection that carries the endpoint, and its port."""

    label: str
    port: int
    node_id: int
    private: bool
    connection: asyncssh.SSHServerConnection


class Forwards:
    """The forwards this gateway holds now, by endpoint label."""

    def __init__(self) -> None:
        self._by_label: dict[str, Forward] = {}

    def add(self, forward: Forward) -> None:
        self._by_label[forward.label] = forward

    def get(self, label: str) -> Forward | None:
        return self._by_label.get(label)

    def labels(self) -> list[str]:
        return list(self._by_label)

    def drop(self, label: str, connection: asyncssh.SSHServerConnection | None = None) -> bool:
        """Forget label's forward (only if it rides connection, when one is named); True if it went."""
        forward = self._by_label.get(label)
        if forward is None or (connection is not None and forward.connection is not connection):
            return False
        del self._by_label[label]
        return True

    def of(self, connection: asyncssh.SSHServerConnection) -> list[str]:
        return [label for label, f in self._by_label.items() if f.connection is connection]

    def __len__(self) -> int:
        return len(self._by_label)


class VirtualListener(asyncssh.SSHListener):
    """What asyncssh keeps for an accepted forward in place of a listening socket: closing it (the
    node cancels the forward, or its connection ends) makes the gateway forget the forward."""

    def __init__(self, gateway: "Gateway", label: str, connection: asyncssh.SSHServerConnection):
        super().__init__()
        self._gateway, self._label, self._connection = gateway, label, connection

    def get_port(self) -> int:
        return 0

    def close(self) -> None:
        self._gateway.forget(self._label, self._connection)

    async def wait_closed(self) -> None:
        return None


class NodeLogin(asyncssh.SSHServer):
    """One node's SSH connection: password login with its node token, forwards of its endpoints,
    and nothing else (no shell, no forwarding into the gateway's network)."""

    def __init__(self, gateway: "Gateway"):
        self._gateway = gateway
        self._connection: asyncssh.SSHServerConnection | None = None
        self.node_id: int | None = None
        self._peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._gateway.connections.add(conn)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self._peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        who = f"node {self.node_id}" if self.node_id is not None else f"an unauthenticated peer at {self._peer}"
        log.info("the tunnel of %s closed%s", who, f": {exc}" if exc else "")
        if self._connection is not None:
            self._gateway.forget_connection(self._connection)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        node_id = await self._gateway.login(username, password)
        if node_id is None:
            log.info("refused a tunnel login as node %r from %s", username[:20], self._peer)
            return False
        self.node_id = node_id
        log.info("node %s opened a tunnel from %s", node_id, self._peer)
        return True

    def session_requested(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False

    async def server_requested(self, listen_host: str, listen_port: int):
        """Accept a forward of endpoint listen_host (its label) on its container port, if it is an
        open endpoint of an attempt this node holds now."""
        if self.node_id is None or self._connection is None:
            return False
        forward = await self._gateway.authorise(self.node_id, listen_host, listen_port, self._connection)
        if forward is None:
            return False
        return VirtualListener(self._gateway, forward.label, self._connection)
