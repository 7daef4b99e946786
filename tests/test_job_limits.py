"""Each job container is limited to its share of the node unless the provider says otherwise."""

from __future__ import annotations

import signal
import time

import pytest

from tests.stack import Stack, embedded_stack


def one_op(image: str, **args) -> dict:
    return {"version": "0.1", "type": "container", "ops": [
        {"type": "container/run", "id": "op", "args": {"image": image, "cmd": "sleep 3", **args}}]}


@pytest.fixture
def stack(tmp_path, sqlite_url, test_image):
    with embedded_stack(tmp_path, sqlite_url, PEERGRID_HEARTBEAT_INTERVAL="1") as stack:
        yield stack


def limits_of_a_run(stack: Stack, docker_client, definition: dict) -> tuple[int, int]:
    """Run the job; return its container's memory limit (bytes) and CPU limit (nano-CPUs) as Docker set them."""
    job_id = stack.api.post("/jobs", definition).json()["id"]
    deadline = time.monotonic() + 30
    while not (found := stack.job_containers(job_id)):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
    host = docker_client.containers.get(found[0]).attrs["HostConfig"]
    assert stack.api.wait(job_id, timeout=30)["state"] == "succeeded", stack.logs()
    return host["Memory"], host["NanoCpus"]


def test_a_job_container_gets_its_share_of_the_node_unless_the_provider_sets_the_limits(
    stack, test_image, docker_client
):
    """Given a node of 2 GPUs and 4 CPU slots, when a 1-GPU op and a CPU op run, then the first gets
    half the machine's memory and CPUs and the second a quarter; when the provider sets
    --job-memory-mb and --job-cpus, those are the limits."""
    engine = docker_client.info()
    memory_mb, cpus = engine["MemTotal"] // (1024 * 1024), engine["NCPU"]

    stack.start_worker(stack.node_token, "--simulate-gpus", "NVIDIA GeForce RTX 4090:24x2", "--slots", "4")
    gpu_memory, gpu_cpus = limits_of_a_run(stack, docker_client, one_op(test_image, gpu=True))
    cpu_memory, cpu_cpus = limits_of_a_run(stack, docker_client, one_op(test_image))
    stack.terminate("worker", signal.SIGTERM)
    stack.start_worker(stack.node_token, "--job-memory-mb", "256", "--job-cpus", "0.5")
    set_memory, set_cpus = limits_of_a_run(stack, docker_client, one_op(test_image))

    assert gpu_memory == memory_mb // 2 * 1024 * 1024 and gpu_cpus == pytest.approx(cpus / 2 * 1e9, rel=0.01)
    assert cpu_memory == memory_mb // 4 * 1024 * 1024 and cpu_cpus == pytest.approx(cpus / 4 * 1e9, rel=0.01)
    assert (set_memory, set_cpus) == (256 * 1024 * 1024, 500_000_000)
