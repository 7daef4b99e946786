"""Where a worker dials its job containers' ports (worker.reach), on the real engine: the published
loopback port from the engine's host, and, from a worker in a container, the job container's short id
on a network both are on, through Docker's DNS."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from docker.errors import NotFound

from worker.errors import WorkerError
from worker.networks import JobNetworks
from worker.reach import LOOPBACK, NETWORK, Reach, dial_target, jobs_network
from worker.settings import WorkerSettings

pytestmark = pytest.mark.docker
HTTPD = ["/bin/sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8000 -h /www"]


@pytest.fixture
def engine(docker_client):
    """The engine, and a list of what the test made on it, removed afterwards."""
    made = []
    yield docker_client, made
    for thing in reversed(made):
        try:
            thing.remove(force=True) if hasattr(thing, "exec_run") else thing.remove()
        except Exception:
            pass


def _fetch(worker, host: str, port: int) -> bytes:
    """What GET http://host:port/ answers from inside the worker's container; a just-started httpd
    (or a just-joined network's DNS record) may take a moment to be there."""
    deadline = time.monotonic() + 10
    while (done := worker.exec_run(["wget", "-qO-", f"http://{host}:{port}/"])).exit_code != 0:
        assert time.monotonic() < deadline, done.output
        time.sleep(0.2)
    return done.output


def _worker(client, made, image):
    """A stand-in for a worker's container: started, as compose starts it, on a network of its own."""
    own = client.networks.create(f"peergrid-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    made.insert(0, own)
    worker = client.containers.run(image, ["sleep", "120"], detach=True, network=own.name,
                                   labels={"peergrid.test": "reach"})
    made.append(worker)
    return worker


def _httpd(client, made, image, **kwargs):
    container = client.containers.run(image, HTTPD, detach=True, labels={"peergrid.test": "reach"}, **kwargs)
    made.append(container)
    container.reload()
    return container


def test_a_worker_on_the_host_dials_the_port_the_engine_publishes_on_its_loopback(engine, test_image):
    client, made = engine
    container = _httpd(client, made, test_image, ports={"8000/tcp": ("127.0.0.1", None)})

    host, port = dial_target(container, 8000, Reach(LOOPBACK))

    assert host == "127.0.0.1" and port != 8000
    deadline = time.monotonic() + 10
    while True:
        try:
            assert requests.get(f"http://{host}:{port}/", timeout=10).text == "hello\n"
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert dial_target(container, 9000, Reach(LOOPBACK)) is None  # not published


def test_a_worker_in_a_container_reaches_its_jobs_by_id_on_their_job_network_and_leaves_it(engine, test_image):
    client, made = engine
    cluster = uuid.uuid4().hex[:12]
    worker = _worker(client, made, test_image)
    reach = Reach.of(NETWORK, worker.name)
    # Told "bridge", it leaves the network to each job's own (worker.networks)
    assert jobs_network(client, reach, "bridge") == "bridge"
    networks = JobNetworks(lambda: client, lambda: {"peergrid.cluster": cluster, "peergrid.node": "7"},
                           lambda: reach.container)
    network = networks.acquire(cluster, 41)
    job = _httpd(client, made, test_image, network=network)

    # When it dials the job's port, it joins the job's network and reaches the job by its id
    host, port = dial_target(job, 8000, reach)

    assert (host, port) == (job.id[:12], 8000)
    assert _fetch(worker, host, port) == b"hello\n"
    # And once the job's container is gone, it leaves the network, which is removed
    job.remove(force=True)
    made.remove(job)
    networks.release(network)
    with pytest.raises(NotFound):
        client.networks.get(network)


def test_a_job_on_a_network_the_worker_is_not_on_yet_is_joined_and_one_without_dns_is_refused(engine, test_image):
    client, made = engine
    worker = _worker(client, made, test_image)
    reach = Reach.of(NETWORK, worker.name)
    # As a job network of its own (one per job) would be: made by someone else, the worker not on it.
    theirs = client.networks.create(f"peergrid-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    made.insert(0, theirs)
    job = _httpd(client, made, test_image, network=theirs.name)

    host, port = dial_target(job, 8000, reach)

    assert (host, port) == (job.id[:12], 8000)
    assert _fetch(worker, host, port) == b"hello\n"
    # On Docker's default bridge its DNS answers no name, and no address is dialled instead.
    on_bridge = _httpd(client, made, test_image)
    assert dial_target(on_bridge, 8000, reach) is None
    with pytest.raises(WorkerError, match="cannot reach job containers on Docker's 'host' network"):
        jobs_network(client, reach, "host")
    # A worker's container started on the default bridge has no DNS of Docker's to ask, and says so.
    bare = client.containers.run(test_image, ["sleep", "120"], detach=True, labels={"peergrid.test": "reach"})
    made.append(bare)
    with pytest.raises(WorkerError, match="start it on a network of its own"):
        jobs_network(client, Reach.of(NETWORK, bare.name), theirs.name)


def test_a_worker_that_is_in_no_container_it_names_says_what_to_set(docker_client):
    with pytest.raises(WorkerError, match="set PEERGRID_WORKER_CONTAINER to its name or id"):
        jobs_network(docker_client, Reach.of(NETWORK, f"no-such-{uuid.uuid4().hex[:8]}"), "their-network")
    with pytest.raises(WorkerError, match='use "loopback"'):
        WorkerSettings.from_env({"PEERGRID_JOB_REACH": "tunnel"})
    settings = WorkerSettings.from_env({"PEERGRID_JOB_REACH": "network", "PEERGRID_WORKER_CONTAINER": "w1"})
    assert (settings.job_reach, settings.worker_container) == ("network", "w1")
