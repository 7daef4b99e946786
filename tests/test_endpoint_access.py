"""Who opens an endpoint: each kind of caller against private and public endpoints, through a real
gateway and a real tunnel to a stand-in service that says what request heads it saw; and the
dashboard hop in Chromium."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.service import Gateway
from scheduler.attempts import claim_attempt
from scheduler.core import Core
from scheduler.endpoint_access import COOKIE, HOP, PASS_COOKIE, hop_url, read_pass, sign_pass
from scheduler.models import ApiToken, Attempt, Endpoint, Node, Op
from scheduler.nodes import NodeReport, register
from scheduler.settings import Settings
from tests import factories
from tests.factories import PASSWORD, bearer, hello_world
from worker.tunnel import Tunnel

SHOTS = Path(__file__).parent / "artifacts" / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def stand_in_service(reader, writer) -> None:
    """A stand-in for a container's web app: each answer's body is the request head it got, so a
    test can see what reached the service; / answers a small page for the browser; a WebSocket
    upgrade is accepted and then every byte is echoed back."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lowered = head.lower()
            length = re.search(rb"content-length: *(\d+)", lowered)
            if length:
                body = await reader.readexactly(int(length.group(1)))
            elif b"transfer-encoding: chunked" in lowered:
                body = await reader.readuntil(b"\r\n0\r\n\r\n")
            else:
                body = b""
            if b"upgrade: websocket" in lowered:
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.close()
                return
            if head.startswith(b"GET /page"):
                text = b"<!doctype html><title>The service</title><h1>Hello from the service</h1>"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
            elif head.startswith(b"GET /stream"):
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for n in range(3):
                    writer.write(f"2\r\n{n}\n\r\n".encode())
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                seen = head + body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: " + COOKIE.encode()
                             + b"=forged-by-the-service\r\nSet-Cookie: own=1\r\nContent-Length: %d\r\n\r\n" % len(seen) + seen)
            await writer.drain()
            if b"connection: close" in lowered:
                writer.close()
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def forward_all(gateway: Gateway, tunnel: Tunnel, labels, target_port: int) -> None:
    """Forward each of labels (container port 8000) to target_port, and wait until both ends hold
    every forward: the gateway took it, and the tunnel heard so."""
    labels = list(labels)
    for label in labels:
        tunnel.open(label, 8000, target_port)
    deadline = time.monotonic() + 10
    while any(gateway.forwards.get(label) is None or label not in tunnel.forwarded for label in labels):
        assert time.monotonic() < deadline, "the gateway never took the tunnel's forwards"
        time.sleep(0.05)


class LoopThread:
    """An event loop in a thread of its own, for the gateway and the stand-in service, so tests
    (and Playwright, which keeps a loop in the main thread) call them with plain sockets."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class World:
    core: Core
    app: object
    gateway: Gateway
    port: int
    web_url: str
    tokens: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)

    def host(self, endpoint: str) -> str:
        return f"{self.labels[endpoint]}.localhost:{self.port}"


def _submit(client, token: str, *, private: bool) -> int:
    doc = hello_world("busybox", cmd="httpd -f -p 8000")
    doc["ops"][0]["args"].update(expose=8000, private=private)
    response = client.post("/api/v1/jobs", json=doc, headers=bearer(token))
    assert response.status_code == 201, response.json
    return response.json["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_template):
    from web import create_app

    root = tmp_path_factory.mktemp("access")
    shutil.copy(sqlite_template, root / "store.sqlite")
    port, web_port = _free_port(), _free_port()
    settings = Settings.from_env({
        "PEERGRID_DATABASE_URL": f"sqlite:///{root / 'store.sqlite'}",
        "PEERGRID_BROKER_URL": f"sqla+sqlite:///{root / 'broker.sqlite'}",
        "PEERGRID_SECRET_KEY": "access-secret", "PEERGRID_GATEWAY_PORT": str(port),
        "PEERGRID_DASHBOARD_URL": f"http://127.0.0.1:{web_port}",
    }, data_dir=root)
    core = Core.from_settings(settings)
    app = create_app(core=core)
    client = app.test_client()
    owner_id, owner_token = factories.user(core, email="owner@example.com")
    _, other_token = factories.user(core, email="other@example.com")
    jobs = {"private": _submit(client, owner_token, private=True), "public": _submit(client, owner_token, private=False),
            "others": _submit(client, other_token, private=True)}
    node_id, node_token, _ = factories.node(core)
    labels = {}
    with core.transaction() as session:
        node = session.get(Node, node_id)
        register(session, node, NodeReport(slots=3))
        for name, job_id in jobs.items():
            attempt_id = session.scalar(select(Attempt.id).join(Op).where(Op.job_id == job_id))
            claim_attempt(session, node, attempt_id)
            labels[name] = session.scalar(select(Endpoint.label).where(Endpoint.attempt_id == attempt_id))

    loop = LoopThread()
    gateway = Gateway(core, ssh_port=0, http_port=port)
    loop.run(gateway.start())
    target = loop.run(asyncio.start_server(stand_in_service, "127.0.0.1", 0))
    tunnel = Tunnel(f"127.0.0.1:{gateway.ssh_port}", gateway.key.export_public_key().decode(), node_id, node_token)
    tunnel.start()
    forward_all(gateway, tunnel, labels.values(), target.sockets[0].getsockname()[1])
    world = World(core=core, app=app, gateway=gateway, port=port, web_url=f"http://127.0.0.1:{web_port}",
                  tokens={"owner": owner_token, "other": other_token}, labels=labels, jobs=jobs)
    world.owner_id = owner_id
    try:
        yield world
    finally:
        tunnel.stop()
        target.close()
        loop.run(gateway.stop())
        loop.stop()
        core.close()


def request(world: World, endpoint: str, path: str = "/", *, headers: dict | None = None, method: str = "GET"):
    """One request to the gateway on a connection of its own: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": world.host(endpoint), **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _cookie_for(world: World, endpoint: str, user: str = "owner") -> str:
    """The access cookie a hop to endpoint sets, got the way a browser gets it."""
    user_id = world.owner_id if user == "owner" else None
    with world.core.transaction() as session:
        if user_id is None:
            user_id = session.scalar(select(ApiToken.user_id).where(ApiToken.prefix == world.tokens[user][:10]))
    url = hop_url(world.core.settings.secret_key, world.core.settings.endpoint_domain, world.labels[endpoint], user_id)
    status, headers, _ = request(world, endpoint, url.split(str(world.port), 1)[1])
    assert status == 303 and headers["Location"] == "/", (status, headers)
    set_cookie = headers["Set-Cookie"]
    assert all(part in set_cookie for part in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=")), set_cookie
    return set_cookie.split(";", 1)[0]


def test_the_owner_opens_a_private_endpoint_by_api_token_and_the_service_sees_no_credential(world):
    # When the owner sends their API token, beside a cookie of the service's own
    status, headers, body = request(world, "private", headers={
        **bearer(world.tokens["owner"]), "Cookie": "theme=dark"})

    # Then the service answers, and the head it saw carries neither the token nor a peergrid cookie
    assert status == 200, body
    assert b"GET / HTTP/1.1" in body and b"theme=dark" in body
    assert b"authorization" not in body.lower() and world.tokens["owner"].encode() not in body
    # And a cookie the service sets under the gateway's name does not reach the browser; its own do
    assert headers.get_all("Set-Cookie") == ["own=1"]


def test_the_owner_hops_from_the_dashboard_and_the_cookie_opens_the_endpoint_on_every_keep_alive_request(world):
    # Given the dashboard's hop route, for the owner signed in
    client = world.app.test_client()
    from tests.test_dashboard import sign_in

    sign_in(client, "owner@example.com")
    hop = client.get(f"/jobs/{world.jobs['private']}/endpoints/{world.labels['private']}")
    # Then it sends the owner to the gateway's hop path on the endpoint's host, with a one-minute pass
    assert hop.status_code == 302, hop.get_data(as_text=True)
    location = hop.headers["Location"]
    assert location.startswith(f"http://{world.host('private')}/__peergrid/hop?pass=")
    token = location.split("pass=", 1)[1]
    held = read_pass(world.core.settings.secret_key, HOP, token, world.labels["private"])
    assert held.user_id == world.owner_id and 50 <= held.expires - time.time() <= 61
    # And the job page links the private endpoint through that route, and the public one straight
    page = client.get(f"/jobs/{world.jobs['private']}").get_data(as_text=True)
    assert f'href="/jobs/{world.jobs["private"]}/endpoints/{world.labels["private"]}"' in page
    public_page = client.get(f"/jobs/{world.jobs['public']}").get_data(as_text=True)
    assert f'href="http://{world.host("public")}/"' in public_page

    # When the browser follows it, the gateway sets its cookie on the endpoint's host
    status, headers, _ = request(world, "private", location.split(str(world.port), 1)[1])
    assert status == 303 and headers["Location"] == "/" and headers["Referrer-Policy"] == "no-referrer"
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    # And the same pass does not work twice
    assert request(world, "private", location.split(str(world.port), 1)[1])[0] == 403

    # Then with the cookie, request after request on one keep-alive connection reaches the service,
    # and no head it sees carries the gateway's cookie (the service's own cookies pass)
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
    for n in range(3):
        conn.request("POST", f"/echo/{n}", body=b"x" * (n * 1000),
                     headers={"Host": world.host("private"), "Cookie": f"a=1; {cookie}; b=2"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        assert f"POST /echo/{n} HTTP/1.1".encode() in body and b"Cookie: a=1; b=2" in body
        assert COOKIE.encode() not in body and body.endswith(b"x" * (n * 1000))
    # And a chunked answer comes through, chunk by chunk, on the same connection
    conn.request("GET", "/stream", headers={"Host": world.host("private"), "Cookie": cookie})
    streamed = conn.getresponse()
    assert streamed.status == 200 and streamed.read() == b"0\n1\n2\n"
    conn.close()


def test_a_chunked_upload_passes_and_the_next_request_on_its_connection_is_checked_and_stripped_too(world):
    cookie = _cookie_for(world, "private")
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as s:
        host = world.host("private")
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode())
        s.sendall(f"GET /after HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {world.tokens['owner']}\r\n"
                  f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    # Then both reached the service, the upload's chunks as sent, and neither head carried a credential
    assert received.count(b"HTTP/1.1 200") == 2, received
    assert b"POST /upload" in received and b"hello\r\n6\r\n world" in received and b"GET /after" in received
    assert COOKIE.encode() + b"=" not in received.split(b"\r\n\r\n", 1)[1]
    assert world.tokens["owner"].encode() not in received and b"authorization" not in received.lower()


def test_a_websocket_upgrade_passes_and_then_bytes_flow_both_ways(world):
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as s:
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: {world.host('private')}\r\nAuthorization: Bearer {world.tokens['owner']}\r\n"
                  "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(b"\x81\x05hello")
        echoed = b""
        while len(echoed) < 7:
            echoed += s.recv(4096)
        assert echoed == b"\x81\x05hello"


def test_everyone_else_is_refused_a_private_endpoint_and_never_reaches_the_service(world):
    secret = world.core.settings.secret_key
    label = world.labels["private"]
    others_cookie = _cookie_for(world, "others", user="other")
    callers = {
        "anonymous": {},
        "another user's API token": bearer(world.tokens["other"]),
        "an unknown API token": bearer("pg_not-a-token-of-anyone"),
        "a node token": bearer("pgn_a-node-token"),
        "another user's cookie for another endpoint": {"Cookie": others_cookie},
        "the other user's cookie renamed to this endpoint": {"Cookie": others_cookie.replace(world.labels["others"], label)},
        "a forged cookie": {"Cookie": f"{COOKIE}={label}.{world.owner_id}.{int(time.time()) + 600}.nonce.forged"},
        "an expired cookie": {"Cookie": f"{COOKIE}=" + sign_pass(secret, PASS_COOKIE, label, world.owner_id, -1)},
        "a hop pass used as a cookie": {"Cookie": f"{COOKIE}=" + sign_pass(secret, HOP, label, world.owner_id, 60)},
    }
    for who, headers in callers.items():
        status, _, body = request(world, "private", headers=headers)
        assert status == 403, (who, status, body)
        assert b"GET / HTTP/1.1" not in body, f"{who} reached the service"
        assert body.endswith(b".\n") and len(body) < 400, (who, body)
    # A forged, an expired, another endpoint's or another user's hop pass sets no cookie
    passes = {
        "forged": f"{label}.{world.owner_id}.{int(time.time()) + 60}.nonce.forged",
        "expired": sign_pass(secret, HOP, label, world.owner_id, -1),
        "for another endpoint": sign_pass(secret, HOP, world.labels["others"], world.owner_id, 60),
        "of a user who does not own the job": sign_pass(secret, HOP, label, world.owner_id + 1, 60),
        "a cookie used as a pass": sign_pass(secret, PASS_COOKIE, label, world.owner_id, 60),
    }
    for which, token in passes.items():
        status, headers, body = request(world, "private", f"/__peergrid/hop?pass={token}")
        assert status == 403 and "Set-Cookie" not in headers, (which, status, body)
    # A browser gets a small page that links to the job's page on the dashboard, to sign in there
    status, headers, body = request(world, "private", headers={"Accept": "text/html,*/*"})
    assert status == 403 and headers["Content-Type"].startswith("text/html")
    assert f'href="{world.web_url}/jobs/{world.jobs["private"]}"'.encode() in body and b"private" in body


def test_a_refused_request_on_a_keep_alive_connection_ends_it_and_reaches_nothing(world):
    # Given a connection on which the owner's first request went through
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as s:
        s.sendall(f"GET /first HTTP/1.1\r\nHost: {world.host('private')}\r\nAuthorization: Bearer {world.tokens['owner']}\r\n\r\n"
                  f"GET /second HTTP/1.1\r\nHost: {world.host('private')}\r\n\r\n".encode())
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    # Then the first was served, the second (no credential) refused, and then the connection closed
    assert received.count(b"HTTP/1.1 200") == 1 and b"GET /first" in received
    assert b"HTTP/1.1 403" in received and b"GET /second" not in received


def test_a_request_for_another_host_on_a_private_endpoints_connection_is_refused(world):
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {world.host('private')}\r\nAuthorization: Bearer {world.tokens['owner']}\r\n\r\n"
                  f"GET / HTTP/1.1\r\nHost: {world.host('others')}\r\nAuthorization: Bearer {world.tokens['owner']}\r\n\r\n".encode())
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 421" in received


def test_a_public_endpoint_opens_for_anyone_with_its_url_and_its_service_sees_no_peergrid_token(world):
    for headers in ({}, bearer(world.tokens["other"]), bearer("pg_not-a-token-of-anyone"), {"Cookie": "theme=dark"}):
        status, _, body = request(world, "public", headers=headers)
        assert status == 200 and b"GET / HTTP/1.1" in body, (headers, status, body)
        assert b"Bearer pg_" not in body, "a public endpoint's service saw a caller's API token"
    # A token the service itself takes passes, to a public endpoint and to a private one
    status, _, body = request(world, "public", headers=bearer("sk-the-services-own"))
    assert status == 200 and b"Authorization: Bearer sk-the-services-own" in body
    cookie = _cookie_for(world, "private")
    status, _, body = request(world, "private", headers={**bearer("sk-the-services-own"), "Cookie": cookie})
    assert status == 200 and b"Authorization: Bearer sk-the-services-own" in body and COOKIE.encode() not in body


def test_a_revoked_token_stops_opening_the_endpoint(world, monkeypatch):
    from gateway import access

    from scheduler.accounts import create_api_token
    from scheduler.models import User

    monkeypatch.setattr(access, "DECISION_TTL_S", 0.0)
    with world.core.transaction() as session:
        token = create_api_token(session, session.get(User, world.owner_id), "to revoke")
    assert request(world, "private", headers=bearer(token))[0] == 200
    with world.core.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.prefix == token[:10]))
        row.revoked_at = row.created_at
    status, _, body = request(world, "private", headers=bearer(token))
    assert status == 403 and b"revoked" in body


def test_a_cookie_stops_opening_the_endpoint_when_its_user_no_longer_owns_the_job(world, monkeypatch):
    from gateway import access
    from scheduler.models import Job

    monkeypatch.setattr(access, "DECISION_TTL_S", 0.0)
    cookie = _cookie_for(world, "private")
    assert request(world, "private", headers={"Cookie": cookie})[0] == 200
    with world.core.transaction() as session:
        job = session.get(Job, world.jobs["private"])
        owner, job.owner_id = job.owner_id, job.owner_id + 1
    try:
        assert request(world, "private", headers={"Cookie": cookie})[0] == 403
    finally:
        with world.core.transaction() as session:
            session.get(Job, world.jobs["private"]).owner_id = owner
    # And once the job is theirs again, the same cookie opens it again (and the gateway remembers that)
    assert request(world, "private", headers={"Cookie": cookie})[0] == 200


def test_the_admin_setting_makes_every_endpoint_private(tmp_path, sqlite_url):
    from web import create_app

    # Given a cluster whose admin made every endpoint private
    settings = Settings.from_env({
        "PEERGRID_DATABASE_URL": sqlite_url, "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        "PEERGRID_SECRET_KEY": "s", "PEERGRID_PRIVATE_ENDPOINTS": "true"}, data_dir=tmp_path)
    assert settings.private_endpoints
    core = Core.from_settings(settings)
    client = create_app(core=core).test_client()
    _, token = factories.user(core)
    _, other_token = factories.user(core)
    job_id = _submit(client, token, private=False)
    node_id, node_token, _ = factories.node(core)
    with core.transaction() as session:
        register(session, session.get(Node, node_id), NodeReport(slots=1))
        attempt_id = session.scalar(select(Attempt.id))
    # When a node claims the op of a job that did not ask for privacy
    claim = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", json={}, headers=bearer(node_token))
    assert claim.status_code == 200, claim.json
    # Then its endpoint is recorded, and shown, as private
    with core.transaction() as session:
        endpoint = session.scalar(select(Endpoint))
        assert endpoint.private is True
        label = endpoint.label
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["endpoints"][0]["private"] is True

    # And a gateway with the setting refuses all but the owner, even for an endpoint recorded public
    with core.transaction() as session:
        session.scalar(select(Endpoint)).private = False

    async def scenario():
        gateway = Gateway(core, ssh_port=0, http_port=0)
        await gateway.start()
        target = await asyncio.start_server(stand_in_service, "127.0.0.1", 0)
        tunnel = Tunnel(f"127.0.0.1:{gateway.ssh_port}", gateway.key.export_public_key().decode(), node_id, node_token)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, tunnel.start)
            tunnel.open(label, 8000, target.sockets[0].getsockname()[1])
            deadline = time.monotonic() + 10
            while (gateway.forwards.get(label) is None or label not in tunnel.forwarded) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            forward = gateway.forwards.get(label)
            assert forward is not None and not forward.private, "the gateway never took the forward"

            def get(headers):
                conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=10)
                conn.request("GET", "/", headers={"Host": f"{label}.localhost", **headers})
                response = conn.getresponse()
                return response.status, response.read()

            return [await loop.run_in_executor(None, get, h) for h in ({}, bearer(other_token), bearer(token))]
        finally:
            await loop.run_in_executor(None, tunnel.stop)
            target.close()
            await gateway.stop()

    from tests.test_gateway import in_a_loop_of_its_own

    try:
        (anon, _), (other, _), (owner, body) = in_a_loop_of_its_own(scenario())
    finally:
        core.close()
    assert (anon, other, owner) == (403, 403, 200), (anon, other, owner, body)
    assert b"authorization" not in body.lower()


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(world):
    """The dashboard served over real HTTP at the URL the gateway's sign-in page links to."""
    from werkzeug.serving import make_server

    port = int(world.web_url.rsplit(":", 1)[1])
    server = make_server("127.0.0.1", port, world.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield world.web_url
    server.shutdown()
    thread.join(10)


def _signed_in(browser, web_url: str, email: str):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(web_url + "/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/(jobs)?$"))
    return context, page


def test_in_chromium_the_owner_opens_a_private_endpoint_from_the_job_page_and_another_user_is_refused(
        world, dashboard, browser):
    job_id, label = world.jobs["private"], world.labels["private"]
    # Given the owner, signed in, on the job's page
    context, page = _signed_in(browser, dashboard, "owner@example.com")
    page.goto(f"{dashboard}/jobs/{job_id}")
    link = page.locator(f"#endpoints a[href$='/endpoints/{label}']")
    assert link.inner_text() == f"http://{world.host('private')}/"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "private-endpoint-job-page.png"), full_page=True)

    # When they click the private endpoint's link (it opens in a new tab)
    with context.expect_page() as opened:
        link.click()
    service = opened.value
    service.wait_for_load_state()
    # Then the hop lands them on the service's page, at / of the endpoint's host
    assert service.url == f"http://{world.host('private')}/", service.url
    assert "GET / HTTP/1.1" in service.content()
    service.goto(f"http://{world.host('private')}/page")
    assert service.locator("h1").inner_text() == "Hello from the service"
    service.screenshot(path=str(SHOTS / "private-endpoint-owner.png"))
    # And the cookie the gateway set is HttpOnly, bound to the endpoint's host
    (cookie,) = [c for c in context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["domain"] == f"{label}.localhost"
    context.close()

    # When another signed-in user follows the same link, and the endpoint's URL itself
    context, page = _signed_in(browser, dashboard, "other@example.com")
    refused = page.goto(f"{dashboard}/jobs/{job_id}/endpoints/{label}")
    assert refused.status == 404
    answer = page.goto(f"http://{world.host('private')}/page")
    # Then they are refused with the sign-in page, and never see the service
    assert answer.status == 403
    assert "This endpoint is private" in page.content() and "Hello from the service" not in page.content()
    page.screenshot(path=str(SHOTS / "private-endpoint-refused.png"))
    context.close()


def test_the_api_says_which_endpoints_are_private(world):
    client = world.app.test_client()
    body = client.get(f"/api/v1/jobs/{world.jobs['private']}", headers=bearer(world.tokens["owner"])).json
    assert body["ops"][0]["endpoints"][0]["private"] is True
    body = client.get(f"/api/v1/jobs/{world.jobs['public']}", headers=bearer(world.tokens["owner"])).json
    assert json.dumps(body["ops"][0]["endpoints"][0]["private"]) == "false"


def test_the_private_endpoints_setting_is_true_or_false_and_says_so():
    from scheduler.errors import ConfigurationError

    assert Settings.from_env({"PEERGRID_SECRET_KEY": "s"}, data_dir="/tmp").private_endpoints is False
    assert Settings.from_env({"PEERGRID_SECRET_KEY": "s", "PEERGRID_PRIVATE_ENDPOINTS": "yes"}, data_dir="/tmp").private_endpoints
    with pytest.raises(ConfigurationError, match="PEERGRID_PRIVATE_ENDPOINTS must be true or false"):
        Settings.from_env({"PEERGRID_SECRET_KEY": "s", "PEERGRID_PRIVATE_ENDPOINTS": "sometimes"}, data_dir="/tmp")
