"""The endpoint gateway: which forwards it accepts from which node, and what its HTTP front answers."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncssh
import pytest
from sqlalchemy import select

from gateway.service import Gateway
from scheduler.attempts import claim_attempt, finish_attempt, start_attempt
from scheduler.endpoints import authorise_forward
from scheduler.errors import Conflict, NotFound
from scheduler.models import Attempt, Endpoint, EndpointForward, Node
from scheduler.nodes import NodeReport, register
from tests import factories
from tests.factories import bearer, hello_world
from worker.tunnel import Tunnel


def service(expose=8000, **args) -> dict:
    doc = hello_world("busybox", cmd="httpd -f -p 8000")
    doc["ops"][0]["args"].update(expose=expose, **args)
    return doc


def claimed(client, core, doc: dict, *, email: str | None = None) -> tuple[int, int, str, int, str]:
    """Submit doc as a new user, and claim its attempt with a new node: job id, node id, node
    token, attempt id, the owner's API token."""
    _, token = factories.user(core, email=email)
    node_id, node_token, _ = factories.node(core)
    response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
    assert response.status_code == 201, response.json
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(slots=1))
        attempt_id = session.scalar(select(Attempt.id).order_by(Attempt.id.desc()))
        claim_attempt(session, node, attempt_id)
    return response.json["id"], node_id, node_token, attempt_id, token


def test_a_claimed_attempt_gets_one_endpoint_per_exposed_port_and_only_its_node_may_forward_it(client, core):
    # Given an op exposing two ports, claimed by a node, and another node
    job_id, node_id, _, attempt_id, token = claimed(client, core, service(expose=[8000, 9000]), email="svc@example.com")
    other_id, _, _ = factories.node(core)
    with core.transaction() as session:
        endpoints = list(session.scalars(select(Endpoint).order_by(Endpoint.port)))
        labels = [e.label for e in endpoints]
        # Then each port has an endpoint with a DNS-safe random label
        assert [e.port for e in endpoints] == [8000, 9000]
        assert all(len(label) == 10 and label.isalnum() and label.islower() for label in labels)
        assert len(set(labels)) == 2
        # And the node holding it may forward each, on its own port only; the other node may not
        assert authorise_forward(session, node_id, labels[0], 8000).attempt_id == attempt_id
        with pytest.raises(NotFound):
            authorise_forward(session, node_id, labels[0], 9000)
        with pytest.raises(Conflict):
            authorise_forward(session, other_id, labels[0], 8000)
        with pytest.raises(NotFound):
            authorise_forward(session, node_id, "aaaaaaaaaa", 8000)

    # And the API lists them, not yet ready (no tunnel)
    body = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
    (op,) = body["ops"]
    assert [(e["port"], e["ready"], e["private"]) for e in op["endpoints"]] == [(8000, False, False), (9000, False, False)]
    assert op["endpoints"][0]["url"] == f"http://{labels[0]}.localhost:8080/"
    # And the job page links them
    from tests.test_dashboard import sign_in

    sign_in(client, "svc@example.com")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'href="http://{labels[0]}.localhost:8080/"' in page and "state-starting" in page

    # When the attempt ends, its endpoints close and no node may forward them
    with core.transaction() as session:
        node = session.get(Node, node_id)
        start_attempt(session, node, attempt_id)
        finish_attempt(session, node, attempt_id, exit_code=0)
    with core.transaction() as session:
        assert all(e.closed_at is not None for e in session.scalars(select(Endpoint)))
        with pytest.raises(NotFound):
            authorise_forward(session, node_id, labels[0], 8000)


def test_an_op_exposing_nothing_gets_no_endpoints(client, core):
    job_id, _, _, _, token = claimed(client, core, hello_world("busybox"))

    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["endpoints"] == []


async def _get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def _service(reader, writer) -> None:
    """A tiny HTTP service standing in for a container: answers hello to each request, keeping the
    connection alive."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
            await writer.drain()
            if b"connection: close" in head.lower():
                writer.close()
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def in_a_loop_of_its_own(coroutine):
    """Run coroutine with asyncio.run in a thread of its own: the browser tests' Playwright keeps an
    event loop running in the main thread for the whole session."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def test_the_gateway_serves_an_endpoint_through_its_nodes_tunnel_and_drops_it_when_the_attempt_ends(client, core):
    job_id, node_id, node_token, attempt_id, token = claimed(client, core, service())
    other_id, other_token, _ = factories.node(core)
    with core.transaction() as session:
        label = session.scalar(select(Endpoint.label))

    async def scenario():
        gateway = Gateway(core, ssh_port=0, http_port=0)
        await gateway.start()
        target = await asyncio.start_server(_service, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        tunnel = None
        try:
            host = f"{label}.localhost:{gateway.http_port}"
            # Given no tunnel yet: the open endpoint answers 503, an unknown one 404, each with a sentence
            status, body = await _get(gateway.http_port, host)
            assert status == 503 and b"try again shortly" in body
            status, body = await _get(gateway.http_port, f"bbbbbbbbbb.localhost:{gateway.http_port}")
            assert status == 404 and b"no such endpoint" in body

            # When another node asks to forward it, the gateway refuses; a wrong token cannot log in
            key = gateway.key.export_public_key().decode()
            pinned = ([asyncssh.import_public_key(key)], [], [])
            async with asyncssh.connect("127.0.0.1", gateway.ssh_port, username=str(other_id), password=other_token,
                                        known_hosts=pinned, client_keys=None, agent_path=None) as conn:
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port(label, 8000, "127.0.0.1", target_port)
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect("127.0.0.1", gateway.ssh_port, username=str(node_id), password=other_token,
                                       known_hosts=pinned, client_keys=None, agent_path=None)

            # When the node holding it opens its tunnel (pinning the gateway's key) and forwards it
            tunnel = Tunnel(f"127.0.0.1:{gateway.ssh_port}", key, node_id, node_token)
            await asyncio.get_running_loop().run_in_executor(None, tunnel.start)
            tunnel.open(label, 8000, target_port)
            assert await _until(lambda: _served(gateway, label, tunnel))

            # Then a request with the endpoint's host name reaches the service, through the tunnel
            status, body = await _get(gateway.http_port, host)
            assert (status, body) == (200, b"hello\n")
            # And a keep-alive connection carries more than one request
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
            for _ in range(2):
                writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                answer = await asyncio.wait_for(reader.readuntil(b"hello\n"), 5)
                assert answer.startswith(b"HTTP/1.1 200 OK")
            # (that streamed answers arrive as sent, not buffered, tests/test_gateway_streams.py shows)
            writer.close()
            # And the store says it is ready once its node also reports it healthy
            body = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
            assert body["ops"][0]["endpoints"][0]["ready"] is False
            healthy = {"ports": [{"port": 8000, "state": "healthy"}]}
            assert client.post(f"/api/v1/node/attempts/{attempt_id}/health", json=healthy,
                               headers=bearer(node_token)).status_code == 200
            body = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json
            assert body["ops"][0]["endpoints"][0]["ready"] is True

            # When the attempt ends
            def end():
                with core.transaction() as session:
                    node = session.get(Node, node_id)
                    start_attempt(session, node, attempt_id)
                    finish_attempt(session, node, attempt_id, exit_code=0)

            await asyncio.get_running_loop().run_in_executor(None, end)

            # Then the gateway drops the forward and the URL answers 404 with a sentence
            assert await _until(lambda: _gone(gateway, label))
            status, body = await _get(gateway.http_port, host)
            assert status == 404 and b"its op has ended" in body
        finally:
            if tunnel is not None:
                await asyncio.get_running_loop().run_in_executor(None, tunnel.stop)
            target.close()
            await gateway.stop()

    in_a_loop_of_its_own(scenario())


async def _served(gateway: Gateway, label: str, tunnel: Tunnel) -> bool:
    """Both ends hold label's forward: the gateway took it, and the tunnel heard so (until then a
    channel the gateway opens finds no listener on the node's side)."""
    return gateway.forwards.get(label) is not None and label in tunnel.forwarded


async def _gone(gateway: Gateway, label: str) -> bool:
    return gateway.forwards.get(label) is None


def test_the_gateways_loop_beats_its_health_file(core, tmp_path):
    from protocol.liveness import Liveness, examine

    core.liveness = Liveness(tmp_path / "health.json", write_every_s=0)

    async def healthy() -> bool:
        return examine(tmp_path / "health.json").healthy

    async def scenario():
        gateway = Gateway(core, ssh_port=0, http_port=0)
        await gateway.start()
        try:
            started = examine(tmp_path / "health.json")
            assert await _until(healthy)
        finally:
            await gateway.stop()
        return started

    started = in_a_loop_of_its_own(scenario())
    assert not started.healthy and "gateway has not gone round yet" in started.problems[0]
    assert "gateway" in examine(tmp_path / "health.json").summary()


def test_a_private_endpoint_refuses_an_anonymous_caller(client, core):
    _, node_id, node_token, _, _ = claimed(client, core, service(private=True))
    with core.transaction() as session:
        label = session.scalar(select(Endpoint.label))

    async def scenario():
        gateway = Gateway(core, ssh_port=0, http_port=0)
        await gateway.start()
        tunnel = Tunnel(f"127.0.0.1:{gateway.ssh_port}", gateway.key.export_public_key().decode(), node_id, node_token)
        try:
            await asyncio.get_running_loop().run_in_executor(None, tunnel.start)
            tunnel.open(label, 8000, _closed_port())
            assert await _until(lambda: _served(gateway, label, tunnel))
            status, body = await _get(gateway.http_port, f"{label}.localhost")
            assert status == 403 and b"private" in body
        finally:
            await asyncio.get_running_loop().run_in_executor(None, tunnel.stop)
            await gateway.stop()

    in_a_loop_of_its_own(scenario())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_gateways_travel_in_the_registration_and_heartbeat_and_endpoints_in_the_work_order_and_old_peers_still_parse():
    from protocol.messages import HeartbeatAnswer, Registration, WorkOrder
    from protocol.services import EndpointRef, GatewayRef
    from protocol.wire import ProtocolError

    gateways = (GatewayRef("a", "gw-a:2222", "ssh-ed25519 AAAA"), GatewayRef("b", "gw-b:2222", "ssh-ed25519 BBBB"))
    registration = Registration(cluster_id="c1", node_id=3, node_name="rig", node_state="online", broker_url="b",
                                heartbeat_interval_s=2, markets=(), gateways=gateways)
    assert Registration.from_wire(registration.to_wire()) == registration
    # A worker that knows one gateway only finds the first; a server that knows one only is understood
    assert registration.to_wire()["gateway"] == {"ssh": "gw-a:2222", "host_key": "ssh-ed25519 AAAA"}
    old = {k: v for k, v in registration.to_wire().items() if k != "gateways"}
    assert Registration.from_wire(old).gateways == (GatewayRef("gateway", "gw-a:2222", "ssh-ed25519 AAAA"),)
    older = {k: v for k, v in old.items() if k != "gateway"}
    assert Registration.from_wire(older).gateways == ()
    beat = HeartbeatAnswer(state="online", gateways=gateways[1:])
    assert HeartbeatAnswer.from_wire(beat.to_wire()) == beat
    assert HeartbeatAnswer.from_wire(HeartbeatAnswer(state="online", gateways=()).to_wire()).gateways == ()
    assert HeartbeatAnswer.from_wire({"state": "online"}).gateways is None  # an older server: keep what it has
    with pytest.raises(ProtocolError):
        HeartbeatAnswer.from_wire({"state": "online", "gateways": [{"name": "a", "ssh": "gw-a:2222"}]})

    order = WorkOrder(id=1, number=1, job_id=1, op="serve", timeout_s=60, market="cpu", gpus=(), spec={"image": "x"},
                      endpoints=(EndpointRef("abcdefghij", 8000),))
    assert WorkOrder.from_wire(order.to_wire()) == order
    assert WorkOrder.from_wire({k: v for k, v in order.to_wire().items() if k != "endpoints"}).endpoints == ()
    with pytest.raises(ProtocolError):
        EndpointRef.from_wire({"label": "Not.A.Label", "port": 8000})


def test_the_tunnel_comes_back_and_forwards_again_after_the_gateway_restarts(client, core):
    _, node_id, node_token, _, _ = claimed(client, core, service())
    with core.transaction() as session:
        label = session.scalar(select(Endpoint.label))

    async def scenario():
        first = Gateway(core, ssh_port=0, http_port=0)
        await first.start()
        ssh_port, http_port = first.ssh_port, first.http_port
        tunnel = Tunnel(f"127.0.0.1:{ssh_port}", first.key.export_public_key().decode(), node_id, node_token)
        await asyncio.get_running_loop().run_in_executor(None, tunnel.start)
        tunnel.open(label, 8000, _closed_port())
        second = None
        try:
            assert await _until(lambda: _served(first, label, tunnel))
            # When the gateway stops, the store no longer says it forwards the endpoint
            await first.stop()
            with core.transaction() as session:
                assert session.scalars(select(EndpointForward)).all() == []
            # When it starts again on the same ports (same data dir, so the same host key)
            second = Gateway(core, ssh_port=ssh_port, http_port=http_port)
            await second.start()
            # Then the node's tunnel reconnects and forwards the endpoint again
            assert await _until(lambda: _served(second, label, tunnel), timeout=15)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, tunnel.stop)
            if second is not None:
                await second.stop()

    in_a_loop_of_its_own(scenario())
