"""The worker↔server protocol, defined once: messages round-trip, the server's answers read as the
worker reads them, and one rule decides which GPUs serve a market, on both sides."""

from __future__ import annotations

import pytest

import protocol.gpus
from protocol.gpus import gb_text, gpu_shortfall, mb_from_gb, version_tuple
from protocol.messages import (
    ClaimAnswer,
    FinishedReport,
    GpuReport,
    HeartbeatAnswer,
    InputRef,
    Joined,
    JoinRequest,
    LogRecord,
    MarketSpec,
    NodeReport,
    Offer,
    Registration,
    ReleaseReport,
    WorkOrder,
)
from protocol.wire import ProtocolError
from scheduler.markets import create_market
from tests import factories
from tests.factories import bearer, hello_world

GPU = {"uuid": "GPU-real-1", "name": "NVIDIA L4", "memory_total_mb": 23034, "index": 0,
       "compute_capability": "8.9", "cuda_version": "12.4", "driver_version": "550.54.15"}


def real_gpu_node(client, core, *gpus: dict) -> str:
    """A node that reports real (not simulated) GPUs, as NVML would."""
    _, node_token, _ = factories.node(core)
    report = {"hostname": "rig", "slots": 1, "simulated": False, "gpus": list(gpus)}
    assert client.post("/api/v1/node/register", json=report, headers=bearer(node_token)).status_code == 200
    return node_token


def market_job(client, core, token, **market) -> int:
    with core.transaction() as session:
        create_market(session, "strict", gpu_count=1, min_vram_mb=20_000, price_per_second=10, **market)
    doc = hello_world("busybox")
    doc["ops"][0]["args"].update(gpu=True, market="strict")
    job = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
    assert job.status_code == 201, job.json
    return client.get(f"/api/v1/jobs/{job.json['id']}", headers=bearer(token)).json["ops"][0]["attempts"][0]["id"]


@pytest.mark.parametrize("market,gpu,why", [
    ({"min_compute_capability": "9.0"}, {}, "compute capability is 8.9 and the market needs 9.0"),
    ({"min_cuda_version": "12.6"}, {}, "CUDA version is 12.4 and the market needs 12.6"),
    ({"min_cuda_version": "12.2"}, {"cuda_version": None}, "CUDA version is unknown"),
])
def test_a_claim_naming_gpus_below_the_markets_compute_capability_or_cuda_is_refused(client, core, market, gpu, why):
    _, token = factories.user(core)
    node = real_gpu_node(client, core, {**GPU, **gpu})
    attempt = market_job(client, core, token, **market)
    refused = client.post(f"/api/v1/node/attempts/{attempt}/claim", json={"gpus": ["GPU-real-1"]}, headers=bearer(node))
    assert refused.status_code == 409 and why in refused.json["error"], refused.json


def test_a_claim_naming_gpus_that_meet_every_requirement_wins(client, core):
    _, token = factories.user(core)
    node = real_gpu_node(client, core, GPU)
    attempt = market_job(client, core, token, min_compute_capability="8.9", min_cuda_version="12.2")
    won = client.post(f"/api/v1/node/attempts/{attempt}/claim", json={"gpus": ["GPU-real-1"]}, headers=bearer(node))
    assert won.status_code == 200 and won.json["attempt"]["gpus"] == ["GPU-real-1"]


def test_the_worker_chooses_gpus_and_the_server_checks_claims_by_one_rule():
    import scheduler.attempts
    import worker.capacity

    assert worker.capacity.pick_gpus is protocol.gpus.pick_gpus
    assert scheduler.attempts.gpu_shortfall is protocol.gpus.gpu_shortfall
    market = MarketSpec(slug="m", queue="market.m", gpu_count=1, min_vram_mb=24_000, min_compute_capability="8.0")
    old = GpuReport(uuid="a", name="T4", memory_total_mb=24_564, compute_capability="7.5")
    assert "compute capability" in gpu_shortfall(old, market)
    assert gpu_shortfall(old, market, simulated=True) is None  # a simulated card has none to compare


def test_one_unit_for_gpu_memory():
    assert mb_from_gb(24) == 24_000 and mb_from_gb(0.5) == 500
    assert gb_text(24_000) == "24" and gb_text(24_564) == "24.6"
    assert version_tuple("12.10") > version_tuple("12.4") and version_tuple("") == ()


def test_every_message_reads_back_what_it_wrote():
    gpu = GpuReport(uuid="GPU-1", name="NVIDIA L4", memory_total_mb=23034, compute_capability="8.9")
    report = NodeReport(gpus=(gpu,), hostname="rig", slots=2, running=(4, 5), undelivered=(3,), volume_jobs=(9,))
    assert NodeReport.from_wire(report.to_wire()) == report
    market = MarketSpec(slug="gpu", queue="market.gpu", gpu_count=2, min_vram_mb=80_000, gpu_models=("H100",))
    registration = Registration(cluster_id="0123abcd", node_id=3, node_name="rig", node_state="online",
                                broker_url="redis://x", heartbeat_interval_s=5.0, markets=(market,))
    assert Registration.from_wire(registration.to_wire()) == registration
    beat = HeartbeatAnswer(state="busy", cancel=(7,), time_limits={8: 60}, ended_jobs=(2,))
    assert HeartbeatAnswer.from_wire(beat.to_wire()) == beat
    offer = Offer(attempt_id=1, job_id=2, op="gpt-oss:120b", market="gpu", queue="market.gpu", gpu_count=2,
                  min_vram_mb=80_000)
    assert Offer.from_wire(offer.to_wire()) == offer
    order = WorkOrder(id=1, number=2, job_id=3, op="train", timeout_s=60, market="gpu", gpus=("GPU-1",),
                      spec={"image": "x", "env": {"TOKEN": "s3cret"}}, inputs=(InputRef("prep", "ab" * 32, 10),),
                      redact=("s3cret",))
    assert ClaimAnswer.from_wire(ClaimAnswer(order).to_wire()) == ClaimAnswer(order)
    finished = FinishedReport(exit_code=0, lines=(LogRecord(1, "stdout", "done"),))
    assert FinishedReport.from_wire(finished.to_wire(), most_lines=10) == finished
    released = ReleaseReport(reason="its worker was stopped", lines=(LogRecord(2, "system", "given back"),))
    assert ReleaseReport.from_wire(released.to_wire(), most_lines=10) == released
    assert JoinRequest.from_wire(JoinRequest(name="gpu-a").to_wire()) == JoinRequest(name="gpu-a")
    joined = Joined(node_id=4, node_name="gpu-a", token="pgn_x")
    assert Joined.from_wire(joined.to_wire()) == joined and "pgn_x" not in repr(joined)


def test_a_work_order_keeps_its_secrets_out_of_its_repr():
    order = WorkOrder(id=1, number=1, job_id=1, op="a", timeout_s=60, market="cpu", gpus=(),
                      spec={"env": {"TOKEN": "s3cret-value"}}, redact=("s3cret-value",))
    assert "s3cret-value" not in repr(order) and "s3cret-value" not in repr(ClaimAnswer(order))


@pytest.mark.parametrize("parse,body,field", [
    (NodeReport.from_wire, {"gpus": [{"uuid": "x"}]}, "gpus[0]"),
    (NodeReport.from_wire, {"slots": 0}, "slots"),
    (NodeReport.from_wire, {"running": [True]}, "running"),
    (NodeReport.from_wire, {"volume_jobs": list(range(1, 1002))}, "volume_jobs"),
    (Offer.from_wire, {"attempt_id": "1", "job_id": 1, "op": "a", "market": "cpu"}, "attempt_id"),
    (Registration.from_wire, {"node": {"id": 1}, "broker_url": "redis://x"}, "cluster.id"),
    (Registration.from_wire, {"cluster": {"id": "../x"}, "node": {"id": 1}, "broker_url": "redis://x"}, "cluster.id"),
    (lambda b: FinishedReport.from_wire(b, most_lines=2), {"exit_code": None}, "exit_code"),
    (JoinRequest.from_wire, {"name": 3}, '"name"'),
    (Joined.from_wire, {"id": 1, "name": "a"}, "node token"),
    (Joined.from_wire, {"id": 0, "name": "a", "token": "pgn_x"}, "id"),
    (lambda b: FinishedReport.from_wire(b, most_lines=2), {"exit_code": 0, "lines": [{"text": "a", "seq": 1}] * 3},
     "At most 2 lines"),
])
def test_a_malformed_message_is_refused_with_a_sentence_naming_the_field(parse, body, field):
    with pytest.raises(ProtocolError) as info:
        parse(body)
    assert field in str(info.value) and str(info.value).endswith(".")


def test_the_servers_answers_read_as_the_worker_reads_them(client, core):
    _, token = factories.user(core)
    _, node_token, _ = factories.node(core)
    node = bearer(node_token)
    registration = Registration.from_wire(client.post("/api/v1/node/register", json={}, headers=node).json)
    assert "market.cpu" in [m.queue for m in registration.markets] and registration.broker_url
    job = client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).json["id"]
    attempt = client.get(f"/api/v1/jobs/{job}", headers=bearer(token)).json["ops"][0]["attempts"][0]["id"]
    order = ClaimAnswer.from_wire(client.post(f"/api/v1/node/attempts/{attempt}/claim", headers=node).json).order
    assert (order.id, order.job_id, order.spec["image"]) == (attempt, job, "busybox")
    beat = HeartbeatAnswer.from_wire(
        client.post("/api/v1/node/heartbeat", json=NodeReport(running=(attempt,)).to_wire(), headers=node).json)
    assert beat.time_limits == {attempt: order.timeout_s} and beat.cancel == ()
    bad = client.post("/api/v1/node/heartbeat", json={"slots": "many"}, headers=node)
    assert bad.status_code == 400 and "slots" in bad.json["error"]
