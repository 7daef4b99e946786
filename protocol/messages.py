"""The messages of the node API and the broker, with their wire form and its checks.

Each message is a frozen dataclass with `to_wire()` (a JSON-ready dict) and, where the other side
sends it, `from_wire(body)`, which checks what arrived and raises ProtocolError (protocol.wire) with
a sentence naming the field. The server reads reports with these and answers with these; the worker
does the reverse; neither writes a field name or a queue name of its own. The messages about
services (gateways, endpoints, a service's health) are in protocol.services.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from protocol.services import EndpointRef, GatewayRef
from protocol.wire import ProtocolError, read_ids, read_object, read_text, read_whole

# Offers travel on the broker's default exchange, routed by queue name.
OFFER_EXCHANGE = ""
OFFER_EXCHANGE_TYPE = "direct"
# The most job ids one heartbeat may ask about, so the server's question stays one small query.
MAX_VOLUME_JOBS = 1000
# What a log line's stream may be: the container's two, or what peergrid itself says about the run.
LOG_STREAMS = ("stdout", "stderr", "system")
# What a cluster id may be: it goes into the names of the Docker volumes workers make.
CLUSTER_ID = re.compile(r"[a-z0-9]{1,32}")
_INT32 = 2**31 - 1


def node_queue(node_id: int) -> str:
    """The queue only one node consumes: offers that must run there."""
    return f"node.{node_id}"


def market_queue(slug: str) -> str:
    """The queue of a market's offers, which any node its free GPUs satisfy may take."""
    return f"market.{slug}"


# -- what a node says about itself ---------------------------------------------------------


@dataclass(frozen=True)
class GpuReport:
    """One GPU as the node's probe sees it (memory in MB, see protocol.gpus)."""

    uuid: str
    name: str
    index: int = 0
    memory_total_mb: int = 0
    memory_free_mb: int = 0
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None

    _INTS = ("index", "memory_total_mb", "memory_free_mb", "utilization_pct", "temperature_c")
    _TEXTS = {"uuid": 100, "name": 200, "compute_capability": 16, "driver_version": 32, "cuda_version": 16}

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, body: Any, where: str = "gpu") -> GpuReport:
        if not isinstance(body, dict) or not isinstance(body.get("uuid"), str) or not isinstance(body.get("name"), str):
            raise ProtocolError(f"{where} needs at least a uuid and a name.")
        values: dict[str, Any] = {}
        for name in cls._INTS:
            if body.get(name) is not None:
                values[name] = read_whole(body[name], f"{where}.{name}", high=_INT32)
        for name, limit in cls._TEXTS.items():
            if body.get(name) is not None:
                values[name] = str(body[name])[:limit]
        return cls(**values)


@dataclass(frozen=True)
class NodeReport:
    """What a worker says about its machine when it registers and on each heartbeat."""

    gpus: tuple[GpuReport, ...] = ()
    simulated: bool = False
    gpu_message: str | None = None
    agent_version: str | None = None
    hostname: str | None = None
    cpu_count: int = 0
    memory_mb: int = 0
    slots: int = 1
    # Attempts the node runs now.
    running: tuple[int, ...] = ()
    # Attempts that have ended on the node whose outcome it keeps until the server takes it.
    undelivered: tuple[int, ...] = ()
    # Jobs whose named volumes the node still keeps (at most MAX_VOLUME_JOBS).
    volume_jobs: tuple[int, ...] = ()
    # False when its containers run without a network (--job-network none): it cannot serve endpoints.
    serves_endpoints: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "gpus": [g.to_wire() for g in self.gpus],
            "running": list(self.running),
            "undelivered": list(self.undelivered),
            "volume_jobs": list(self.volume_jobs[:MAX_VOLUME_JOBS]),
        }

    @classmethod
    def from_wire(cls, body: Any) -> NodeReport:
        body = read_object(body, "A node report")
        gpus = body.get("gpus") or []
        if not isinstance(gpus, list):
            raise ProtocolError("gpus must be a list.")
        return cls(
            gpus=tuple(GpuReport.from_wire(g, f"gpus[{i}]") for i, g in enumerate(gpus)),
            simulated=bool(body.get("simulated", False)),
            gpu_message=read_text(body.get("gpu_message"), 500),
            agent_version=read_text(body.get("agent_version"), 50),
            hostname=read_text(body.get("hostname"), 255),
            cpu_count=read_whole(body.get("cpu_count"), "cpu_count", high=1_000_000, default=0),
            memory_mb=read_whole(body.get("memory_mb"), "memory_mb", high=2**40, default=0),
            slots=read_whole(body.get("slots"), "slots", low=1, high=1024, default=1),
            running=read_ids(body.get("running"), "running must be a list of attempt ids."),
            undelivered=read_ids(body.get("undelivered"), "undelivered must be a list of attempt ids."),
            volume_jobs=read_ids(
                body.get("volume_jobs"), f"volume_jobs must be a list of at most {MAX_VOLUME_JOBS} job ids.",
                most=MAX_VOLUME_JOBS,
            ),
            serves_endpoints=body.get("serves_endpoints", True) is not False,
        )


# -- what the server answers -----------------------------------------------------------------


@dataclass(frozen=True)
class MarketSpec:
    """A market as a worker needs to know it: its queue and what its GPUs must be."""

    slug: str
    queue: str
    gpu_count: int = 0
    min_vram_mb: int = 0
    gpu_models: tuple[str, ...] = ()
    min_compute_capability: str | None = None
    min_cuda_version: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_models": list(self.gpu_models)}

    @classmethod
    def from_wire(cls, body: Any) -> MarketSpec:
        body = read_object(body, "A market")
        if not isinstance(body.get("slug"), str) or not isinstance(body.get("queue"), str):
            raise ProtocolError("A market needs its slug and queue.")
        return cls(
            slug=body["slug"],
            queue=body["queue"],
            gpu_count=read_whole(body.get("gpu_count"), "gpu_count", high=1024, default=0),
            min_vram_mb=read_whole(body.get("min_vram_mb"), "min_vram_mb", default=0),
            gpu_models=tuple(str(m) for m in body.get("gpu_models") or ()),
            min_compute_capability=body.get("min_compute_capability"),
            min_cuda_version=body.get("min_cuda_version"),
        )


def _gateways(body: dict[str, Any]) -> tuple[GatewayRef, ...] | None:
    """The gateways an answer lists; from an older server, the one gateway it names; None if it says nothing."""
    if "gateways" in body:
        listed = body["gateways"]
        if not isinstance(listed, list):
            raise ProtocolError("gateways must be a list of gateways.")
        return tuple(GatewayRef.from_wire(g) for g in listed)
    one = read_object(body.get("gateway"), "gateway")
    if one.get("ssh") and one.get("host_key"):
        return (GatewayRef.from_wire({"name": "gateway", **one}),)
    return None


@dataclass(frozen=True)
class Registration:
    """The answer to a node's registration: who it is and in which cluster, where offers come from,
    what markets exist."""

    # Everything the node makes on its Docker engine carries it, beside the node's id: another
    # cluster's workers on the same engine have nodes of the same ids.
    cluster_id: str
    node_id: int
    node_name: str
    node_state: str
    broker_url: str = field(repr=False)
    heartbeat_interval_s: float
    markets: tuple[MarketSpec, ...]
    protocol: int = 1
    # The live gateways the node tunnels its endpoints to (every one of them); later heartbeats
    # carry the list again as gateways come and go.
    gateways: tuple[GatewayRef, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        body = {
            "cluster": {"id": self.cluster_id},
            "node": {"id": self.node_id, "name": self.node_name, "state": self.node_state},
            "broker_url": self.broker_url,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "markets": [m.to_wire() for m in self.markets],
            "protocol": self.protocol,
        }
        body["gateways"] = [g.to_wire() for g in self.gateways]
        if self.gateways:  # what workers that know one gateway only read
            body["gateway"] = {"ssh": self.gateways[0].ssh, "host_key": self.gateways[0].host_key}
        return body

    @classmethod
    def from_wire(cls, body: Any) -> Registration:
        body = read_object(body, "The registration answer")
        node = read_object(body.get("node"), "node")
        if not isinstance(body.get("broker_url"), str):
            raise ProtocolError("The registration answer names no broker.")
        cluster = read_object(body.get("cluster"), "cluster").get("id")
        if not isinstance(cluster, str) or not CLUSTER_ID.fullmatch(cluster):
            raise ProtocolError("cluster.id must be the cluster's id: 1 to 32 lowercase letters and digits.")
        return cls(
            cluster_id=cluster,
            node_id=read_whole(node.get("id"), "node.id", low=1),
            node_name=str(node.get("name", "")),
            node_state=str(node.get("state", "online")),
            broker_url=body["broker_url"],
            heartbeat_interval_s=float(body.get("heartbeat_interval_s") or 10),
            markets=tuple(MarketSpec.from_wire(m) for m in body.get("markets") or ()),
            protocol=int(body.get("protocol") or 1),
            gateways=_gateways(body) or (),
        )


@dataclass(frozen=True)
class JoinRequest:
    """A worker asking, with a join token, to become a new node of the token's owner."""

    name: str

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_wire(cls, body: Any) -> JoinRequest:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ProtocolError('Send {"name": "..."}: the new node\'s name, as a string.')
        return cls(name=body["name"])


@dataclass(frozen=True)
class Joined:
    """The answer to a join: the node made, and its token, which the server keeps no copy of."""

    node_id: int
    node_name: str
    token: str = field(repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.node_id, "name": self.node_name, "token": self.token}

    @classmethod
    def from_wire(cls, body: Any) -> Joined:
        body = read_object(body, "The join answer")
        if not isinstance(body.get("token"), str) or not body["token"]:
            raise ProtocolError("The join answer carries no node token.")
        return cls(node_id=read_whole(body.get("id"), "id", low=1), node_name=str(body.get("name", "")),
                   token=body["token"])


@dataclass(frozen=True)
class HeartbeatAnswer:
    """What the server tells a node on each heartbeat."""

    state: str
    # Attempts the node runs that are no longer its own: stop their containers, report nothing.
    cancel: tuple[int, ...] = ()
    # Seconds each attempt the node holds may run (an extend can raise them while they run).
    time_limits: dict[int, int] = field(default_factory=dict)
    # Ended jobs, of those the node asked about, whose volumes it may remove.
    ended_jobs: tuple[int, ...] = ()
    # The live gateways now, which the node keeps its tunnels in step with; None from a server
    # that does not say (the node keeps those it has).
    gateways: tuple[GatewayRef, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        body = {
            "state": self.state,
            "cancel": list(self.cancel),
            "time_limits": {str(k): v for k, v in self.time_limits.items()},
            "ended_jobs": list(self.ended_jobs),
        }
        if self.gateways is not None:
            body["gateways"] = [g.to_wire() for g in self.gateways]
        return body

    @classmethod
    def from_wire(cls, body: Any) -> HeartbeatAnswer:
        body = read_object(body, "The heartbeat answer")
        limits = read_object(body.get("time_limits"), "time_limits")
        return cls(
            state=str(body.get("state", "online")),
            cancel=read_ids(body.get("cancel"), "cancel must be a list of attempt ids."),
            time_limits={int(k): read_whole(v, f"time_limits.{k}", low=1) for k, v in limits.items()},
            ended_jobs=read_ids(body.get("ended_jobs"), "ended_jobs must be a list of job ids."),
            gateways=_gateways({"gateways": body["gateways"]}) if "gateways" in body else None,
        )


@dataclass(frozen=True)
class Offer:
    """An attempt waiting for a node, as the broker carries it: public requirements only, never secrets."""

    attempt_id: int
    job_id: int
    op: str
    market: str
    queue: str
    gpu_count: int
    min_vram_mb: int
    # The GPUs (UUIDs) the scheduler placed it on, which the node claims it with.
    gpus: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": list(self.gpus)}

    @classmethod
    def from_wire(cls, body: Any) -> Offer:
        body = read_object(body, "An offer")
        if not isinstance(body.get("market"), str) or not isinstance(body.get("op"), str):
            raise ProtocolError("An offer needs its market and op.")
        return cls(
            attempt_id=read_whole(body.get("attempt_id"), "attempt_id", low=1),
            job_id=read_whole(body.get("job_id"), "job_id", low=1),
            op=body["op"],
            market=body["market"],
            queue=str(body.get("queue", "")),
            gpu_count=read_whole(body.get("gpu_count"), "gpu_count", default=0),
            min_vram_mb=read_whole(body.get("min_vram_mb"), "min_vram_mb", default=0),
            gpus=_uuids(body.get("gpus")),
        )


def _uuids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("gpus must be a list of GPU UUIDs.")
    return tuple(value)


@dataclass(frozen=True)
class InputRef:
    """A parent op's output that a dependent attempt fetches before it starts."""

    op: str
    sha256: str
    size: int

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkOrder:
    """The claim's answer to the node that won it: everything needed to run the attempt.

    The spec carries secret values (this is the only message that does), so it and the values to
    mask stay out of any repr or log line.
    """

    id: int
    number: int
    job_id: int
    op: str
    timeout_s: int
    market: str
    gpus: tuple[str, ...]
    spec: dict[str, Any] = field(repr=False)
    inputs: tuple[InputRef, ...] = ()
    # What the node masks as *** in the lines it reports.
    redact: tuple[str, ...] = field(default=(), repr=False)
    # The URLs its exposed ports get, which the node forwards to its gateway once the container runs.
    endpoints: tuple[EndpointRef, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "number": self.number, "job_id": self.job_id, "op": self.op, "timeout_s": self.timeout_s,
            "market": self.market, "gpus": list(self.gpus), "spec": self.spec,
            "inputs": [i.to_wire() for i in self.inputs], "redact": list(self.redact),
            "endpoints": [e.to_wire() for e in self.endpoints],
        }

    @classmethod
    def from_wire(cls, body: Any) -> WorkOrder:
        body = read_object(body, "A work order")
        spec = body.get("spec")
        if not isinstance(spec, dict) or not isinstance(body.get("op"), str):
            raise ProtocolError("A work order needs its op and spec.")
        return cls(
            id=read_whole(body.get("id"), "id", low=1),
            number=read_whole(body.get("number"), "number", low=1, default=1),
            job_id=read_whole(body.get("job_id"), "job_id", low=1),
            op=body["op"],
            timeout_s=read_whole(body.get("timeout_s"), "timeout_s", low=1),
            market=str(body.get("market", "")),
            gpus=tuple(str(g) for g in body.get("gpus") or ()),
            spec=spec,
            inputs=tuple(
                InputRef(op=str(i["op"]), sha256=str(i["sha256"]), size=int(i.get("size") or 0))
                for i in body.get("inputs") or ()
            ),
            redact=tuple(str(r) for r in body.get("redact") or ()),
            endpoints=tuple(EndpointRef.from_wire(e) for e in body.get("endpoints") or ()),
        )


@dataclass(frozen=True)
class ClaimAnswer:
    """A won claim's answer: the work order, or why the server would not hand the attempt over
    after all (it has recorded that, and the attempt is over)."""

    order: WorkOrder | None
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        if self.order is None:
            return {"attempt": None, "error": self.error}
        return {"attempt": self.order.to_wire()}

    @classmethod
    def from_wire(cls, body: Any) -> ClaimAnswer:
        body = read_object(body, "The claim answer")
        order = body.get("attempt")
        return cls(order=WorkOrder.from_wire(order) if order is not None else None, error=body.get("error"))


# -- what a node says about an attempt -------------------------------------------------------


@dataclass(frozen=True)
class LogRecord:
    """One line of an attempt's output, numbered by the node so a re-sent batch is stored once."""

    seq: int
    stream: str
    text: str

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


def log_records(lines: Any, *, most: int) -> list[LogRecord]:
    """Read a batch of log lines; refuse a batch of more than `most`."""
    if not isinstance(lines, list):
        raise ProtocolError('Send {"lines": [{"seq", "stream", "text"}, ...]}.')
    if len(lines) > most:
        raise ProtocolError(f"At most {most} lines per batch.")
    records = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            raise ProtocolError(f"lines[{i}] needs a text.")
        stream = str(line.get("stream", "stdout"))
        records.append(
            LogRecord(
                seq=read_whole(line.get("seq"), f"lines[{i}].seq", low=1),
                stream=stream if stream in LOG_STREAMS else "stdout",
                text=line["text"],
            )
        )
    return records


@dataclass(frozen=True)
class FinishedReport:
    """How an attempt ended on its node: an exit code, or an error when it could not run; with the
    log lines not sent yet (one request where a short op would need two)."""

    exit_code: int | None
    error: str | None = None
    lines: tuple[LogRecord, ...] = ()
    # Whether the node takes more work now: the answer carries its next work only then (not while
    # it drains or stops).
    more: bool = True

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"exit_code": self.exit_code, "error": self.error}
        if self.lines:
            body["lines"] = [line.to_wire() for line in self.lines]
        if not self.more:
            body["more"] = False
        return body

    @classmethod
    def from_wire(cls, body: Any, *, most_lines: int) -> FinishedReport:
        body = read_object(body, "The finished report")
        exit_code = body.get("exit_code")
        if exit_code is not None:
            exit_code = read_whole(exit_code, "exit_code", low=-(2**31), high=_INT32)
        error = body.get("error")
        if error is not None:
            error = str(error)[:2000]
        if exit_code is None and error is None:
            raise ProtocolError("Send the exit_code, or an error saying why the container could not run.")
        lines = body.get("lines") or []
        if not isinstance(lines, list):
            raise ProtocolError('lines must be a list of {"seq", "stream", "text"}.')
        more = body.get("more", True)
        if not isinstance(more, bool):
            raise ProtocolError("more must be true or false: whether the node takes more work now.")
        return cls(exit_code=exit_code, error=error, lines=tuple(log_records(lines, most=most_lines)), more=more)


@dataclass(frozen=True)
class FinishedAnswer:
    """The server's answer to a finished report: the attempt's state, and the node's next work,
    claimed for it already on the GPUs the attempt freed."""

    id: int
    state: str
    next: tuple[WorkOrder, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "next": [order.to_wire() for order in self.next]}

    @classmethod
    def from_wire(cls, body: Any) -> FinishedAnswer:
        body = read_object(body, "The answer to a finished report")
        orders = body.get("next") or []
        if not isinstance(orders, list):
            raise ProtocolError("next must be a list of work orders.")
        return cls(
            id=read_whole(body.get("id"), "id", low=1), state=str(body.get("state", "")),
            next=tuple(WorkOrder.from_wire(order) for order in orders),
        )


@dataclass(frozen=True)
class ReleaseReport:
    """A node giving an attempt back unfinished, its worker stopping: the server offers it again
    at once, unbilled and not counted as a try. With why, and the log lines not sent yet."""

    reason: str
    lines: tuple[LogRecord, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": self.reason}
        if self.lines:
            body["lines"] = [line.to_wire() for line in self.lines]
        return body

    @classmethod
    def from_wire(cls, body: Any, *, most_lines: int) -> ReleaseReport:
        body = read_object(body, "The release report")
        lines = body.get("lines") or []
        if not isinstance(lines, list):
            raise ProtocolError('lines must be a list of {"seq", "stream", "text"}.')
        reason = read_text(body.get("reason"), 500) or "its worker was stopped"
        return cls(reason=reason, lines=tuple(log_records(lines, most=most_lines)))


@dataclass(frozen=True)
class LogsAnswer:
    """What became of a batch of log lines."""

    stored: int
    # The attempt's log reached its limit: the node should stop sending lines.
    full: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"stored": self.stored, **({"log_full": True} if self.full else {})}

    @classmethod
    def from_wire(cls, body: Any) -> LogsAnswer:
        body = read_object(body, "The logs answer")
        return cls(stored=int(body.get("stored") or 0), full=bool(body.get("log_full")))
