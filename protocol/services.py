"""The messages about services: the gateways a node tunnels to, the endpoints it forwards, a service's health."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.wire import ProtocolError, read_object, read_text, read_whole

# What an endpoint's label may be: the first DNS label of its URL.
ENDPOINT_LABEL = re.compile(r"[a-z0-9]{1,32}")
# How an exposed port's checks stand: not passed yet (the service is starting), passing, or failing
# after they had passed.
PORT_HEALTH = ("starting", "healthy", "unhealthy")
MAX_PORTS = 1000


@dataclass(frozen=True)
class GatewayRef:
    """A live gateway as a node is told of it: its name, host:port of its SSH server, and its public
    host key (OpenSSH's one-line form), which the node pins. A node tunnels to every one."""

    name: str
    ssh: str
    host_key: str = field(repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "ssh": self.ssh, "host_key": self.host_key}

    @classmethod
    def from_wire(cls, body: Any) -> GatewayRef:
        body = read_object(body, "A gateway")
        name, ssh, key = read_text(body.get("name"), 100), read_text(body.get("ssh"), 255), read_text(body.get("host_key"), 16_384)
        if not ssh or not key:
            raise ProtocolError("A gateway must name its ssh address and its host_key.")
        return cls(name=name or ssh, ssh=ssh, host_key=key)


@dataclass(frozen=True)
class EndpointRef:
    """An endpoint the node forwards to its gateway while it runs the attempt: the URL's label and
    the container port behind it."""

    label: str
    port: int

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, body: Any) -> EndpointRef:
        body = read_object(body, "An endpoint")
        label = body.get("label")
        if not isinstance(label, str) or not ENDPOINT_LABEL.fullmatch(label):
            raise ProtocolError("An endpoint's label must be 1 to 32 lowercase letters and digits.")
        return cls(label=label, port=read_whole(body.get("port"), "port", low=1, high=65535))


@dataclass(frozen=True)
class PortHealth:
    """How one exposed port's health checks stand, with a short sentence on the last failure."""

    port: int
    state: str
    detail: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"port": self.port, "state": self.state, "detail": self.detail}

    @classmethod
    def from_wire(cls, body: Any) -> PortHealth:
        body = read_object(body, "A port's health")
        state = body.get("state")
        if state not in PORT_HEALTH:
            raise ProtocolError(f"A port's health state must be one of {', '.join(PORT_HEALTH)}.")
        return cls(port=read_whole(body.get("port"), "port", low=1, high=65535), state=state,
                   detail=read_text(body.get("detail"), 500))


@dataclass(frozen=True)
class HealthReport:
    """A service attempt's health on its node: each exposed port's checks, and how often its
    container was restarted in place (and whether it is restarting now, and why it last was)."""

    ports: tuple[PortHealth, ...] = ()
    restarts: int = 0
    restarting: bool = False
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"ports": [p.to_wire() for p in self.ports], "restarts": self.restarts,
                "restarting": self.restarting, "reason": self.reason}

    @classmethod
    def from_wire(cls, body: Any) -> HealthReport:
        body = read_object(body, "The health report")
        ports = body.get("ports") or []
        if not isinstance(ports, list) or len(ports) > MAX_PORTS:
            raise ProtocolError(f'ports must be a list of at most {MAX_PORTS} {{"port", "state", "detail"}}.')
        restarting = body.get("restarting", False)
        if not isinstance(restarting, bool):
            raise ProtocolError("restarting must be true or false.")
        read = tuple(PortHealth.from_wire(p) for p in ports)
        if len({p.port for p in read}) != len(read):
            raise ProtocolError("Each port's health is sent once.")
        return cls(ports=read, restarts=read_whole(body.get("restarts"), "restarts", high=2**31 - 1, default=0),
                   restarting=restarting, reason=read_text(body.get("reason"), 500))
