"""Providers' nodes: creation, authentication by node token, registration and heartbeats."""

from __future__ import annotations

import secrets
import unicodedata
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocol.messages import GpuReport, HeartbeatAnswer, NodeReport, Registration
from scheduler.hearing import Hearing
from scheduler.heartbeats import HeardNode, held_attempts, write_report
from scheduler.heartbeats import gateway_refs as heard_gateways
from scheduler.last_seen import SeenBuffer
from scheduler.accounts import NODE_TOKEN_PREFIX, hash_token, new_token
from scheduler.errors import AuthenticationError, Banned, Conflict, PeergridError
from scheduler.markets import market_spec
from scheduler.placing import want_pass
from scheduler.models import Attempt, Cluster, Job, Market, Node, NodeGpu, Op, User
from scheduler.models.cluster import THIS_CLUSTER
from scheduler.states import ATTEMPT_HELD, JOB_FINISHED, NodeState, move, utcnow


def create_node(session: Session, owner: User, name: str) -> tuple[Node, str]:
    """Register a node for owner and return it with its token, which is not kept.

    Raises:
        Conflict: owner already has a node of that name.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise PeergridError("A node needs a name of 1 to 100 characters.")
    if any(unicodedata.category(c) == "Cc" for c in name):
        # NUL cannot be stored in PostgreSQL at all; a line break or tab would garble every list of nodes.
        raise PeergridError(
            "A node's name cannot hold a control character (NUL, a line break, a tab): "
            "use letters, digits, spaces and punctuation."
        )
    exists = session.scalar(select(Node.id).where(Node.owner_id == owner.id, Node.name == name))
    if exists is not None:
        raise Conflict(f"You already have a node called {name!r}.")
    token = new_token(NODE_TOKEN_PREFIX)
    node = Node(owner_id=owner.id, name=name, token_hash=hash_token(token), state=NodeState.OFFLINE)
    session.add(node)
    session.flush()
    return node, token


def node_for_token(session: Session, token: str) -> Node:
    """The node a token belongs to.

    Raises:
        AuthenticationError: unknown, or its node was removed.
        Banned: an admin banned the node.
    """
    node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
    if node is None or node.removed_at is not None:
        raise AuthenticationError("The node token is unknown; create a node with `peergrid node create`.")
    if node.banned_at is not None:
        raise Banned(f"Node {node.name} is banned: {node.ban_reason or 'ask an admin why'}.")
    return node


def remove_node(session: Session, node: Node, *, now: datetime | None = None) -> None:
    """Retire a node: its token stops working; its history stays in the jobs it ran.

    Raises:
        Conflict: it is running work now (drain it first).
    """
    held = session.scalar(select(Attempt.id).where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD)).limit(1))
    if held is not None:
        raise Conflict(f"Node {node.name} is running work; drain it and wait for it to finish first.")
    now = now or utcnow()
    node.removed_at = now
    node.token_hash = hash_token(new_token("removed-"))  # nothing can authenticate as it again
    node.name = f"{node.name} (removed {now:%Y-%m-%d %H:%M})"[:100]
    if node.state != NodeState.OFFLINE:
        move(node, NodeState.OFFLINE, now=now)


def ban_node(session: Session, node: Node, reason: str, *, now: datetime | None = None) -> None:
    """Bar a node from the platform: its reports are refused and what it runs is offered elsewhere."""
    from scheduler.attempts import lose_attempts

    reason = reason.strip()
    if not reason:
        raise PeergridError("Say why the node is banned; its owner sees the reason.")
    now = now or utcnow()
    node.banned_at = now
    node.ban_reason = reason[:500]
    lose_attempts(session, node, f"node {node.name} was banned.", now=now)
    if node.state != NodeState.OFFLINE:
        move(node, NodeState.OFFLINE, now=now)


def unban_node(session: Session, node: Node) -> None:
    node.banned_at = None
    node.ban_reason = None


def cluster_id(session: Session) -> str:
    """This cluster's id, made on first use: what its workers label everything they make with."""
    uid = session.scalar(select(Cluster.uid).where(Cluster.id == THIS_CLUSTER))
    if uid is not None:
        return uid
    try:
        with session.begin_nested():
            session.add(Cluster(id=THIS_CLUSTER, uid=secrets.token_hex(8), created_at=utcnow()))
    except IntegrityError:
        pass  # another process made it first; its id is the one
    return session.scalar(select(Cluster.uid).where(Cluster.id == THIS_CLUSTER))


def record_report(
    session: Session, node: Node, report: NodeReport, *, holds: bool | None = None, now: datetime | None = None
) -> None:
    """Register or refresh a node from its report: hardware, liveness and busy state.

    holds says whether the node holds attempts, when the caller knows already; else it is looked up.
    """
    now = now or utcnow()
    node.simulated = report.simulated
    node.gpu_message = report.gpu_message
    node.agent_version = report.agent_version
    node.hostname = report.hostname
    node.cpu_count = report.cpu_count
    node.memory_mb = report.memory_mb
    node.slots = max(1, report.slots)
    node.serves_endpoints = report.serves_endpoints
    node.last_heartbeat_at = now
    _replace_gpus(node, report.gpus)
    if node.drain_requested:
        # A drain outlives the node going silent: it comes back draining, as its owner left it.
        move(node, NodeState.DRAINING, now=now)
    else:
        if holds is None:
            holds = session.scalar(
                select(Attempt.id).where(Attempt.node_id == node.id, Attempt.state.in_(ATTEMPT_HELD)).limit(1)
            ) is not None
        move(node, NodeState.BUSY if holds or report.running else NodeState.ONLINE, now=now)


def register(
    session: Session,
    node: Node,
    report: NodeReport,
    *,
    broker_url: str = "",
    heartbeat_interval_s: float = 10.0,
    now: datetime | None = None,
) -> Registration:
    """A worker (re)starting: what the node held before is gone with the old process. Answer with
    who it is and in which cluster, the broker to take offers from, and the markets there are."""
    from scheduler.attempts import lose_attempts

    now = now or utcnow()
    lose_attempts(session, node, f"node {node.name} restarted while running it.", now=now)
    node.registered_at = now
    record_report(session, node, report, now=now)
    want_pass(session)  # a node (back) with all its capacity free
    from scheduler.endpoints import gateway_refs

    return Registration(
        cluster_id=cluster_id(session),
        node_id=node.id,
        node_name=node.name,
        node_state=node.state.value,
        broker_url=broker_url,
        heartbeat_interval_s=heartbeat_interval_s,
        markets=tuple(market_spec(m) for m in session.scalars(select(Market).order_by(Market.id))),
        gateways=gateway_refs(session, now=now),
    )


def heartbeat(
    session: Session,
    node: Node | HeardNode,
    report: NodeReport,
    *,
    heartbeat_interval_s: float = 10.0,
    now: datetime | None = None,
    seen: SeenBuffer | None = None,
) -> HeartbeatAnswer:
    """Refresh a node from its heartbeat and reconcile what it holds both ways: attempts it runs
    that are no longer its own it must stop; attempts the server thinks it holds but it neither
    runs nor keeps an outcome of are lost. Answer with what it must stop, how long what it holds
    may run, and which of the jobs it keeps volumes for have ended.

    Only what the report changes is written (scheduler.heartbeats); with seen, the time the node
    was heard waits there to be written in a batch. A change placement reads asks for a pass.
    """
    from scheduler.attempts import lose_forgotten
    from scheduler.placing import want_pass

    now = now or utcnow()
    loaded = node if isinstance(node, Node) else None
    if loaded is not None:
        session.flush()  # what the caller changed is stored before the report is compared with it
    heard = HeardNode.of(node) if loaded is not None else node
    rows = held_attempts(session, heard.id)
    accounted = set(report.running) | set(report.undelivered)
    # An attempt claimed within the last interval may have been won after the node made its report.
    cutoff = now - timedelta(seconds=heartbeat_interval_s)
    forgotten = [a for a, _, claimed in rows if a not in accounted and claimed is not None and claimed < cutoff]
    if forgotten:
        lose_forgotten(session, loaded or session.get(Node, heard.id), forgotten, now=now)
    held = {a: timeout for a, timeout, _ in rows if a not in forgotten}
    outcome = write_report(session, heard, report, holds=bool(held), now=now, seen=seen)
    if outcome.placement_changed:
        want_pass(session)
    if loaded is not None and outcome.wrote:
        session.expire(loaded)  # its row and GPUs were written past the ORM

    return HeartbeatAnswer(
        state=outcome.state.value,
        # Attempts the node runs that are no longer its own (cancelled, or given to another node).
        cancel=tuple(sorted(set(report.running) - set(held))),
        time_limits=held,
        ended_jobs=tuple(ended_jobs(session, heard, report.volume_jobs)),
        gateways=heard_gateways(session, now=now),
    )


def ended_jobs(session: Session, node: Node | HeardNode, job_ids: tuple[int, ...]) -> list[int]:
    """Of job_ids, those that have ended and that node ran an attempt of; of other jobs it learns nothing."""
    if not job_ids:
        return []
    return list(
        session.scalars(
            select(Job.id)
            .join(Op, Op.job_id == Job.id)
            .join(Attempt, Attempt.op_id == Op.id)
            .where(Job.id.in_(job_ids), Job.state.in_(JOB_FINISHED), Attempt.node_id == node.id)
            .distinct()
            .order_by(Job.id)
        )
    )


def reap_silent_nodes(
    session: Session, *, timeout_s: float, heard: Hearing | None = None, now: datetime | None = None
) -> list[Node]:
    """Mark nodes silent past timeout_s offline; their attempts are lost and offered again.

    Given how long the server heard without a gap (scheduler.hearing), silence counts only within
    that span: a node the server could not hear while it was down is not blamed for it.
    """
    from scheduler.attempts import lose_attempts

    now = now or utcnow()
    cutoff = (heard.until if heard is not None else now) - timedelta(seconds=timeout_s)
    if heard is not None and heard.since > cutoff:
        return []  # since hearing resumed, not one whole timeout has passed
    silent = list(
        session.scalars(
            select(Node)
            .where(Node.state != NodeState.OFFLINE)
            .where((Node.last_heartbeat_at < cutoff) | Node.last_heartbeat_at.is_(None))
            .with_for_update(skip_locked=True)
        )
    )
    for node in silent:
        move(node, NodeState.OFFLINE, now=now)
        lose_attempts(session, node, f"node {node.name} stopped sending heartbeats.", now=now)
    return silent


def set_draining(session: Session, node: Node, draining: bool, *, now: datetime | None = None) -> None:
    """Drain a node (it finishes what runs and takes nothing new), or take it back into service."""
    node.drain_requested = draining
    if draining:
        if node.state != NodeState.OFFLINE:  # an offline node starts draining when it comes back
            move(node, NodeState.DRAINING, now=now)
    elif node.state == NodeState.DRAINING:
        move(node, NodeState.ONLINE, now=now)


def _replace_gpus(node: Node, gpus: tuple[GpuReport, ...]) -> None:
    current = {g.uuid: g for g in node.gpus}
    seen = set()
    for report in gpus:
        seen.add(report.uuid)
        row = current.get(report.uuid)
        if row is None:
            row = NodeGpu(uuid=report.uuid, index=report.index, name=report.name)
            node.gpus.append(row)
        for name, value in vars(report).items():
            setattr(row, name, value)
    for uuid, row in current.items():
        if uuid not in seen:
            node.gpus.remove(row)
