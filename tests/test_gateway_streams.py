"""What passes through the gateway unchanged: keep-alive, 100 MB bodies both ways, chunked and
server-sent streams as they are sent, and WebSocket upgrades to a real websocketd in a container.

One gateway and one node's tunnel serve the whole module, on loop threads of their own; each test
forwards an endpoint of one claimed job to a service on loopback (or to a container's published
port) and talks to the gateway with plain blocking clients from the test's own thread."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from gateway.service import Gateway
from scheduler.core import Core
from scheduler.models import Endpoint
from scheduler.settings import Settings
from tests.test_gateway import claimed, service
from worker.tunnel import Tunnel

# Ports the module's one job exposes: one endpoint each, handed out to the tests in turn.
PORTS = list(range(8000, 8008))
# How long a streaming service waits for the client to say it has a chunk before giving up on it.
ACK_WAIT_S = 5.0
# How long a client waits on any one read.
READ_TIMEOUT_S = 20.0
MIB = 1024 * 1024
BIG = 100 * MIB


class Rig:
    """A gateway on a loop thread of its own, a node's tunnel to it, and the endpoints of one job."""

    def __init__(self, core: Core, labels: list[str], node_id: int, node_token: str):
        self.core = core
        self._free = list(zip(labels, PORTS))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        self.gateway = Gateway(core, ssh_port=0, http_port=0)
        self._call(self.gateway.start())
        self.port = self.gateway.http_port
        self.tunnel = Tunnel(f"127.0.0.1:{self.gateway.ssh_port}", self.gateway.key.export_public_key().decode(),
                             node_id, node_token)
        self.tunnel.start()

    def _call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def endpoint(self, target_port: int) -> str:
        """Forward the next free endpoint to 127.0.0.1:target_port; its Host header once the gateway serves it."""
        label, port = self._free.pop(0)
        self.tunnel.open(label, port, target_port)
        deadline = time.monotonic() + 10
        # Both ends hold it: the gateway took it, and the tunnel heard so (until then a channel the
        # gateway opens finds no listener on the node's side).
        while self.gateway.forwards.get(label) is None or label not in self.tunnel.forwarded:
            assert time.monotonic() < deadline, f"the gateway never took the forward of endpoint {label}"
            time.sleep(0.02)
        return f"{label}.localhost:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=READ_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT_S)

    def close(self) -> None:
        self.tunnel.stop()
        self._call(self.gateway.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, sqlite_template):
    from web import create_app

    root = tmp_path_factory.mktemp("streams")
    shutil.copy(sqlite_template, root / "store.sqlite")
    core = Core.from_settings(Settings.from_env(
        {"PEERGRID_DATABASE_URL": f"sqlite:///{root / 'store.sqlite'}",
         "PEERGRID_BROKER_URL": f"sqla+sqlite:///{root / 'broker.sqlite'}", "PEERGRID_SECRET_KEY": "x"},
        data_dir=root))
    app = create_app(core=core)
    app.config["TESTING"] = True
    _, node_id, node_token, _, _ = claimed(app.test_client(), core, service(expose=PORTS))
    with core.transaction() as session:
        labels = list(session.scalars(select(Endpoint.label).order_by(Endpoint.port)))
    rig = Rig(core, labels, node_id, node_token)
    yield rig
    rig.close()
    core.close()


# -- a service on loopback -----------------------------------------------------------------


def block(n: int, base: bytes = hashlib.sha256(b"peergrid").digest() * (MIB // 32)) -> bytes:
    """The n-th MiB of a large body: each differs, so a lost, doubled or reordered piece changes the hash."""
    return n.to_bytes(8, "big") + base[8:]


def body(size: int):
    for n in range(size // MIB):
        yield block(n)


class Handler(BaseHTTPRequestHandler):
    """One connection to the loopback service; HTTP/1.1, so it stays open between requests."""

    protocol_version = "HTTP/1.1"
    server: "Service"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.connection_id = self.server.connections

    def log_message(self, format, *args) -> None:
        pass

    def _reply(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Connection", str(self.connection_id))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._reply(200, b"hello\n")
        elif self.path.startswith("/download/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for piece in body(size):
                self.wfile.write(piece)
        elif self.path == "/chunks":
            self._stream(chunked=True)
        elif self.path == "/events":
            self._stream(chunked=False)
        else:
            self._reply(404, b"no such path\n")

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        digest, seen = hashlib.sha256(), 0
        while seen < length:
            piece = self.rfile.read(min(MIB, length - seen))
            if not piece:
                break
            digest.update(piece)
            seen += len(piece)
        self._reply(200, json.dumps({"bytes": seen, "sha256": digest.hexdigest()}).encode(), "application/json")

    def _stream(self, *, chunked: bool) -> None:
        """Send three pieces, each only once the client has said it holds the one before: a gateway
        that held a piece back would leave this waiting, and the client would never see the next."""
        stream = self.server.stream
        self.send_response(200)
        if chunked:
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        for n, piece in enumerate(stream.pieces):
            stream.sent.append(time.monotonic())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if n + 1 < len(stream.pieces) and not stream.acks[n].wait(ACK_WAIT_S):
                give_up = f"no acknowledgement of piece {n}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(give_up), give_up) if chunked else give_up)
                break
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class Stream:
    """The pieces a streaming answer sends, when each was sent, and the client's acknowledgements."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces
        self.sent: list[float] = []
        self.acks = [threading.Event() for _ in pieces]


class Service(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.stream = Stream([])

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture(scope="module")
def loopback():
    server = Service()
    thread = threading.Thread(target=server.serve_forever, name="service", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def host(rig, loopback) -> str:
    """The Host header of an endpoint forwarded to the loopback service."""
    return rig.endpoint(loopback.port)


def read_until(sock: socket.socket, got: bytearray, marker: bytes) -> float:
    """Read from sock into got until marker is in it; when it arrived."""
    while marker not in got:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = None
        assert data, f"the stream ended or stalled before {marker!r}; got {bytes(got)!r}"
        got += data
    return time.monotonic()


# -- the tests -----------------------------------------------------------------------------


def test_several_requests_on_one_kept_alive_connection_are_each_answered_over_one_connection_to_the_service(
        rig, loopback, host):
    connection = rig.http()
    before = loopback.connections
    seen = []
    try:
        for n in range(5):
            if n == 2:
                connection.request("POST", "/upload", body=b"x" * 1000, headers={"Host": host})
                response = connection.getresponse()
                assert json.loads(response.read())["bytes"] == 1000
            else:
                connection.request("GET", "/hello", headers={"Host": host})
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, b"hello\n")
            seen.append(response.headers["X-Connection"])
            assert not response.will_close
    finally:
        connection.close()
    # Then every answer came over the one connection the gateway's channel opened to the service
    assert len(set(seen)) == 1 and loopback.connections == before + 1, (seen, loopback.connections, before)


def test_a_100_mb_request_body_and_a_100_mb_response_body_pass_unchanged(rig, host):
    connection = rig.http()
    try:
        # When a client uploads 100 MB, hashing what it sends as it sends it
        sent = hashlib.sha256()

        def upload():
            for piece in body(BIG):
                sent.update(piece)
                yield piece

        connection.request("POST", "/upload", body=upload(), headers={"Host": host, "Content-Length": str(BIG)})
        response = connection.getresponse()
        # Then the service got every byte, in order
        assert response.status == 200
        assert json.loads(response.read()) == {"bytes": BIG, "sha256": sent.hexdigest()}

        # When it downloads 100 MB on the same connection
        connection.request("GET", f"/download/{BIG}", headers={"Host": host})
        response = connection.getresponse()
        assert response.status == 200 and response.headers["Content-Length"] == str(BIG)
        got, size = hashlib.sha256(), 0
        while piece := response.read(MIB):
            got.update(piece)
            size += len(piece)
    finally:
        connection.close()
    # Then it got every byte the service sent, in order
    expected = hashlib.sha256()
    for piece in body(BIG):
        expected.update(piece)
    assert (size, got.hexdigest()) == (BIG, expected.hexdigest())


def test_a_chunked_answer_arrives_chunk_by_chunk_with_its_framing_unchanged(rig, loopback, host):
    # Given a service that sends each chunk only once the client holds the one before
    loopback.stream = stream = Stream([b"chunk 0\n", b"chunk 1\n", b"chunk 2\n"])
    sock = rig.connect()
    got, arrived = bytearray(), []
    try:
        sock.sendall(f"GET /chunks HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        # When the client reads each chunk through the gateway and acknowledges it
        for n, piece in enumerate(stream.pieces):
            arrived.append(read_until(sock, got, piece))
            stream.acks[n].set()
        read_until(sock, got, b"0\r\n\r\n")
    finally:
        sock.close()
    # Then each chunk arrived before the next was sent: nothing was held back
    assert len(stream.sent) == 3 and all(arrived[n] < stream.sent[n + 1] for n in range(2)), (arrived, stream.sent)
    # And the chunked framing is the service's own, byte for byte
    head, _, framed = bytes(got).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert framed == b"8\r\nchunk 0\n\r\n8\r\nchunk 1\n\r\n8\r\nchunk 2\n\r\n0\r\n\r\n"


def test_server_sent_events_arrive_event_by_event_until_the_service_closes(rig, loopback, host):
    # Given a service streaming events with no length, ended by closing the connection
    loopback.stream = stream = Stream([f"id: {n}\ndata: tick {n}\n\n".encode() for n in range(3)])
    sock = rig.connect()
    got, arrived = bytearray(), []
    try:
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        for n, piece in enumerate(stream.pieces):
            arrived.append(read_until(sock, got, piece))
            stream.acks[n].set()
        # Then the gateway passes the service's close on as the end of the stream
        while data := sock.recv(65536):
            got += data
    finally:
        sock.close()
    assert len(stream.sent) == 3 and all(arrived[n] < stream.sent[n + 1] for n in range(2)), (arrived, stream.sent)
    head, _, events = bytes(got).partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream" in head.lower()
    assert events == b"".join(stream.pieces)


def test_a_websocket_to_websocketd_in_a_container_opens_through_the_endpoint_url(rig, docker_client,
                                                                                 websocketd_image):
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    # Given websocketd serving /bin/cat in a container, its port published on loopback
    container = docker_client.containers.run(websocketd_image, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
                                             labels={"peergrid-test": "gateway-streams"})
    try:
        container.reload()
        published = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        host = rig.endpoint(published)
        # When a client opens a WebSocket at the endpoint's URL, through the gateway
        deadline = time.monotonic() + 20
        while True:
            try:
                ws = connect(f"ws://{host}/", sock=rig.connect(), open_timeout=10)
                break
            except (OSError, WebSocketException) as e:  # websocketd may still be starting
                if time.monotonic() > deadline:
                    raise AssertionError(f"no WebSocket opened through the gateway: {e}\n"
                                         f"{container.logs().decode(errors='replace')[-2000:]}") from e
                time.sleep(0.2)
        with ws:
            # Then the upgrade passed through, and each message comes back from the container
            assert ws.response.status_code == 101
            assert ws.response.headers["Upgrade"].lower() == "websocket"
            messages = ["hello", "through the gateway", "x" * 60000]
            for message in messages:
                ws.send(message)
                assert ws.recv(timeout=10) == message
    finally:
        container.remove(force=True)


def test_the_nodes_tunnel_asks_for_aes_gcm_first(rig, host):
    # asyncssh's own first choice, chacha20-poly1305, builds three ChaCha20 contexts and a Poly1305
    # tag a packet to AES-GCM's one call: the CPU a proxied request costs halved (bench/endpoints.py).
    forward = rig.gateway.forwards.get(host.split(".", 1)[0])
    assert forward.connection.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"
