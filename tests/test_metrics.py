"""/metrics: what Prometheus sees, and who may scrape it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests import factories
from tests.factories import bearer, hello_world


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_jobs_queues_nodes_gpus_and_credits(client, core):
    _, token = factories.user(core, credits=10)
    client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token))
    _, node_token, _ = factories.node(core)
    gpu = {"uuid": "GPU-1", "name": "NVIDIA L4", "memory_total_mb": 23034, "utilization_pct": 40, "index": 0}
    client.post("/api/v1/node/register", json={"gpus": [gpu], "simulated": True}, headers=bearer(node_token))

    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    found = samples(response.get_data(as_text=True))
    assert found[("peergrid_jobs", (("state", "queued"),))] == 1
    assert found[("peergrid_queue_depth", (("market", "cpu"),))] == 1
    assert found[("peergrid_nodes", (("state", "online"),))] == 1
    assert found[("peergrid_gpus_online", (("model", "NVIDIA L4"), ("simulated", "true")))] == 1
    assert found[("peergrid_gpu_utilization_percent", (("model", "NVIDIA L4"), ("simulated", "true")))] == 40
    assert found[("peergrid_credits_micro", (("kind", "escrow"),))] == 360_000


def test_metrics_need_the_token_when_one_is_set(client, core):
    object.__setattr__(core.settings, "metrics_token", "scrape-me")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("scrape-me")).status_code == 200
    object.__setattr__(core.settings, "metrics_token", None)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
