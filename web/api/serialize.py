"""The JSON shapes of the API's answers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import object_session

from scheduler.endpoints import attempt_endpoints, endpoint_ready, endpoint_url
from scheduler.models import Attempt, Endpoint, Job, JobEvent, Market, Node, Op
from scheduler.queue_view import NodeRef, attempt_waiting
from web.db import core


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def node_ref(node: Node | None) -> dict | None:
    return {"id": node.id, "name": node.name} if node else None


def attempt_json(attempt: Attempt) -> dict:
    return {
        "id": attempt.id,
        "number": attempt.number,
        "state": attempt.state.value,
        "node": node_ref(attempt.node),
        "gpus": list(attempt.gpus or []),
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "exit_code": attempt.exit_code,
        "error": attempt.error,
        "cost": attempt.cost,
        "cost_note": attempt.cost_note,
        # A service's: restarts in place so far, whether it is restarting now, since when it is ready.
        "restarts": attempt.restarts,
        "restarting": attempt.restarting,
        "ready_at": iso(attempt.ready_at),
    }


def op_json(op: Op) -> dict:
    last = op.attempts[-1] if op.attempts else None
    node = next((a.node for a in reversed(op.attempts) if a.node is not None), None)
    return {
        "id": op.key,
        "type": op.type,
        "state": op.state.value,
        "market": op.market.slug,
        "exit_code": op.exit_code,
        "error": op.error,
        "results": op.results or {},
        "node": node_ref(node),
        "started_at": iso(op.started_at),
        "finished_at": iso(op.finished_at),
        "timeout": op.timeout_s,
        "attempts": [attempt_json(a) for a in op.attempts],
        "last_attempt": last.id if last else None,
        "endpoints": [endpoint_json(e) for e in attempt_endpoints(object_session(op), last)] if last else [],
        # Of its last attempt: how often its container was restarted in place, and whether it is now.
        "restarts": last.restarts if last else 0,
        "restarting": last.restarting if last else False,
        # Why it waits and where it stands, while its last attempt waits to be placed or claimed.
        "waiting": waiting_json(object_session(op), last),
    }


def waiting_json(session, attempt: Attempt | None) -> dict | None:
    waiting = attempt_waiting(session, attempt)
    if waiting is None:
        return None

    def ref(node: NodeRef | None) -> dict | None:
        return {"id": node.id, "name": node.name} if node else None

    reserved = {"node": ref(waiting.reserved_on), "from": iso(waiting.reserved_from)} if waiting.reserved_on else None
    return {"reason": waiting.reason, "placed_on": ref(waiting.placed_on), "reserved": reserved,
            "since": iso(waiting.since)}


def endpoint_json(endpoint: Endpoint) -> dict:
    return {
        "port": endpoint.port,
        "url": endpoint_url(endpoint.label, core().settings.endpoint_domain),
        "ready": endpoint_ready(endpoint),
        "private": endpoint.private or core().settings.private_endpoints,
        "open": endpoint.closed_at is None,
        # Its port's health checks as its node reports them: starting, healthy or unhealthy, with
        # the last failure's sentence.
        "health": endpoint.health.value,
        "health_detail": endpoint.health_detail,
        "health_at": iso(endpoint.health_at),
    }


def event_json(event: JobEvent, op_keys: dict[int, str]) -> dict:
    return {
        "time": iso(event.created_at),
        "kind": event.kind,
        "op": op_keys.get(event.op_id) if event.op_id else None,
        "attempt": event.attempt_id,
        "message": event.message,
    }


def job_json(job: Job, *, with_ops: bool = True, events: list[JobEvent] | None = None) -> dict:
    body = {
        "id": job.id,
        "state": job.state.value,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "cost": job.cost,
        "max_cost": job.max_cost,
        "reserved": job.reserved,
        "priority": job.priority,
        # The array it is a job of, and its index there; None for a lone job.
        "array_id": job.array_id,
        "array_index": job.array_index,
    }
    if with_ops:
        body["ops"] = [op_json(op) for op in job.ops]
    if events is not None:
        keys = {op.id: op.key for op in job.ops}
        body["events"] = [event_json(e, keys) for e in events]
    return body


def node_json(node: Node) -> dict:
    return {
        "id": node.id,
        "name": node.name,
        "state": node.state.value,
        # Its owner asked it to drain; an offline node starts draining when it returns.
        "drain_requested": node.drain_requested,
        "simulated": node.simulated,
        "gpu_message": node.gpu_message,
        "hostname": node.hostname,
        "cpu_count": node.cpu_count,
        "memory_mb": node.memory_mb,
        "slots": node.slots,
        "agent_version": node.agent_version,
        "last_heartbeat_at": iso(node.last_heartbeat_at),
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "memory_total_mb": g.memory_total_mb,
                "memory_free_mb": g.memory_free_mb,
                "compute_capability": g.compute_capability,
                "driver_version": g.driver_version,
                "cuda_version": g.cuda_version,
                "utilization_pct": g.utilization_pct,
                "temperature_c": g.temperature_c,
                "simulated": node.simulated,
            }
            for g in node.gpus
        ],
    }


def market_json(market: Market) -> dict:
    return {
        "slug": market.slug,
        "name": market.name,
        "queue": market.queue,
        "gpu_count": market.gpu_count,
        "min_vram_mb": market.min_vram_mb,
        "gpu_models": list(market.gpu_models or []),
        "min_compute_capability": market.min_compute_capability,
        "min_cuda_version": market.min_cuda_version,
        "price_per_second": market.price_per_second,
        "fee_ppm": market.fee_ppm,
        "max_timeout_s": market.max_timeout_s,
    }


def movement_json(m) -> dict:
    return {
        "transaction": m.transaction_id,
        "time": iso(m.time),
        "kind": m.kind,
        "key": m.key,
        "account": m.account,
        "user": m.user_email,
        "amount": m.amount,
        "job": m.job_id,
        "attempt": m.attempt_id,
        "payout": m.payout_id,
        "memo": m.memo,
    }


def payout_json(payout, email: str | None) -> dict:
    return {
        "id": payout.id,
        "user": email,
        "amount": payout.amount,
        "state": payout.state.value,
        "requested_at": iso(payout.requested_at),
        "decided_at": iso(payout.decided_at),
        "decided_by": payout.decided_by_id,
        "reference": payout.reference,
        "reason": payout.reason,
    }
