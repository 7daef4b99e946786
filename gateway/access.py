"""Private endpoints at the gateway: every request on a connection is read with h11, its caller
checked (the job's owner, by API token or by the access cookie a dashboard hop set), and the
peergrid credentials taken out of it before it goes on to the service. A connection to a public
endpoint whose first request carries peergrid credentials is read the same way, unchecked, so that
someone else's service never sees them.

h11 rather than a parser of our own: it is the well-kept sans-I/O HTTP/1.1 state machine (httpcore
and uvicorn build on it), so keep-alive, pipelining, chunked and Content-Length bodies, HEAD,
100-continue and protocol switches are framed by code that has met real clients. One h11 connection
faces the client (we are its server) and one faces the service (we are its client); events pass
from one to the other as they arrive, so streamed answers are not buffered. After a 101 (a
WebSocket upgrade) both sides switch to piping bytes. Other connections to public endpoints do not
come here: their bytes are piped unread (gateway/front.py)."""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import asyncssh
import h11

from gateway.pipes import CHUNK, MAX_HEAD, pipe
from scheduler.endpoint_access import (
    COOKIE,
    COOKIE_TTL_S,
    HOP,
    HOP_PATH,
    PASS_COOKIE,
    AccessRefused,
    Holder,
    endpoint_holder,
    is_peergrid_token,
    owner_by_pass,
    owner_by_token,
    read_pass,
    sign_pass,
)

if TYPE_CHECKING:
    from gateway.service import Gateway
    from gateway.tunnels import Forward

log = logging.getLogger(__name__)

# How long the gateway trusts what the store said about a caller: a revoked token, or a job that is
# no longer theirs, stops opening the endpoint this long after at the most.
DECISION_TTL_S = 5.0
# Past this many remembered decisions the stale ones are dropped.
MAX_DECISIONS = 10_000
_COOKIE = COOKIE.encode()


class Access:
    """What the gateway remembers about access: recent decisions of the store, so the requests of
    a keep-alive connection do not each ask it, and the hop passes already traded for cookies."""

    def __init__(self, gateway: "Gateway"):
        self._gateway = gateway
        self._decisions: dict[tuple, tuple[float, int | None, str]] = {}
        self._used_hops: dict[str, float] = {}

    @property
    def _secret(self) -> str:
        return self._gateway.settings.secret_key

    async def _decide(self, key: tuple, work) -> int:
        """work(session) in the store: a user id, or AccessRefused; remembered for a few seconds."""
        now = time.monotonic()
        known = self._decisions.get(key)
        if known is None or now - known[0] >= DECISION_TTL_S:
            try:
                user_id, reason = await self._gateway._store(work), ""
            except AccessRefused as e:
                user_id, reason = None, str(e)
            if len(self._decisions) >= MAX_DECISIONS:
                self._decisions = {k: v for k, v in self._decisions.items() if now - v[0] < DECISION_TTL_S}
            known = self._decisions[key] = (now, user_id, reason)
        if known[1] is None:
            raise AccessRefused(known[2])
        return known[1]

    async def admit(self, label: str, token: str | None, cookies: list[str]) -> int:
        """The id of the caller, if they may open the private endpoint label.

        Raises:
            AccessRefused: they may not; the message says what to do.
        """
        if token is not None:
            digest = hashlib.sha256(token.encode()).hexdigest()
            return await self._decide(("token", label, digest), lambda s: owner_by_token(s, label, token))
        refusal = None
        for value in cookies:
            try:
                held = read_pass(self._secret, PASS_COOKIE, value, label)
                return await self._decide(("user", label, held.user_id), lambda s: owner_by_pass(s, label, held.user_id))
            except AccessRefused as e:
                refusal = e
        raise refusal or AccessRefused(
            "This endpoint is private: it opens only for its job's owner. Send 'Authorization: Bearer <API token>', "
            "or open it from its job's page on the dashboard."
        )

    async def trade_hop(self, label: str, token: str) -> str:
        """The access cookie's value for a genuine, unused hop pass to label.

        Raises:
            AccessRefused: the pass is forged, expired, used, or its user does not own the endpoint now.
        """
        held = read_pass(self._secret, HOP, token, label)
        now = time.time()
        self._used_hops = {nonce: until for nonce, until in self._used_hops.items() if until >= now}
        if held.nonce in self._used_hops:
            raise AccessRefused("This pass was used already; open the endpoint from its job's page again.")
        # Spent before the store is asked, so two requests racing with one pass cannot both win.
        self._used_hops[held.nonce] = held.expires
        await self._gateway._store(lambda s: owner_by_pass(s, label, held.user_id))
        return sign_pass(self._secret, PASS_COOKIE, label, held.user_id, COOKIE_TTL_S)

    async def holder(self, label: str) -> Holder | None:
        try:
            return await self._gateway._store(lambda s: endpoint_holder(s, label))
        except Exception as e:  # the refusal still goes out, without its link
            log.warning("could not look endpoint %s up: %s", label, e)
            return None


def take_credentials(request: h11.Request) -> tuple[h11.Request, str | None, list[str]]:
    """The request without peergrid's credentials in it, the peergrid token it carried and the values of
    the access cookies it carried. An Authorization header that is not a peergrid API token is the
    service's own and stays; so do other cookies."""
    token, cookies, headers = None, [], []
    for name, value in request.headers.raw_items():
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and is_peergrid_token(credential.strip()):
                token = credential.strip()
                continue
        elif lowered == b"cookie":
            kept = []
            for pair in value.split(b";"):
                pair = pair.strip()
                cookie_name, _, cookie_value = pair.partition(b"=")
                if cookie_name.strip() == _COOKIE:
                    cookies.append(cookie_value.strip().decode("latin-1"))
                elif pair:
                    kept.append(pair)
            if not kept:
                continue
            value = b"; ".join(kept)
        headers.append((name, value))
    stripped = h11.Request(method=request.method, target=request.target, headers=headers,
                           http_version=request.http_version)
    return stripped, token, cookies


def _capital(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _header(request: h11.Request, wanted: bytes) -> bytes:
    return b", ".join(value for name, value in request.headers if name == wanted)


def _host_label(request: h11.Request) -> str:
    host = _header(request, b"host").decode("latin-1").lower()
    return host.split(".", 1)[0].split(":", 1)[0]


def carries_credentials(head: bytes) -> bool:
    """Whether a request head carries a peergrid token or the gateway's access cookie."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer" and is_peergrid_token(credential.strip().decode("latin-1")):
                return True
        elif name == b"cookie" and _COOKIE + b"=" in value:
            return True
    return False


class ReadConnection:
    """One client connection whose requests the gateway reads, for as long as it stays open: to a
    private endpoint (each request's caller checked), or to a public one (credentials only stripped)."""

    def __init__(self, gateway: "Gateway", forward: "Forward", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer, *, private: bool):
        self.gateway, self.forward, self.reader, self.writer, self.peer = gateway, forward, reader, writer, peer
        self.private = private
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.service: h11.Connection | None = None
        self.up_reader = self.up_writer = None
        self._answering: asyncio.Task | None = None
        # Set when a request/answer cycle ends (or the connection switches protocol or ends), to wake
        # the client side waiting for it.
        self._wake = asyncio.Event()
        self._ended = False

    async def run(self, head: bytes) -> None:
        self.client.receive_data(head)
        try:
            wait = await self._from_client()
            if wait and self._answering is not None:
                await self._answering
        except (h11.ProtocolError, asyncssh.Error) as e:  # the other side broke off; the connection ends
            log.info("a connection to endpoint %s ended: %s", self.forward.label, e)
        finally:
            self._ended = True
            if self._answering is not None and not self._answering.done():
                self._answering.cancel()
            if self.up_writer is not None:
                self.up_writer.close()

    # -- the client's side ---------------------------------------------------------------------

    async def _from_client(self) -> bool:
        """Read the client's requests and send them on; True if an answer under way should finish."""
        while not self._ended:
            try:
                event = self.client.next_event()
            except h11.RemoteProtocolError as e:
                if self.client.our_state is h11.SEND_RESPONSE:
                    await self._answer(e.error_status_hint, "This is not an HTTP/1.1 request the gateway can read.", close=True)
                return False
            if event is h11.NEED_DATA:
                data = await self.reader.read(CHUNK)
                if self._ended:
                    return False
                self.client.receive_data(data)
            elif event is h11.PAUSED:
                # The request is done and its answer is not (or a switch of protocol is pending).
                self._wake.clear()
                await self._wake.wait()
                if self.client.our_state is h11.SWITCHED_PROTOCOL:
                    return await self._pipe_from_client()
            elif isinstance(event, h11.Request):
                if not await self._admit(event):
                    return False
            elif isinstance(event, h11.Data):
                self._to_service(h11.Data(data=event.data))
                await self.up_writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                if self.service is not None and self.service.our_state is h11.SEND_BODY:
                    self._to_service(h11.EndOfMessage(headers=event.headers))
                self._next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                if self.up_writer is not None and self.up_writer.can_write_eof():
                    self.up_writer.write_eof()
                return True
        return False

    async def _admit(self, request: h11.Request) -> bool:
        """Answer a request for the hop path or from a caller who may not open the endpoint, or send
        it on without peergrid's credentials; False when the connection should close."""
        label = self.forward.label
        if _host_label(request) != label:
            await self._answer(421, "This connection is to another endpoint; open a new one for this host.", close=True)
            return False
        target = urlsplit(request.target.decode("latin-1"))
        if self.private and target.path == HOP_PATH:
            return await self._hop(request, parse_qs(target.query).get("pass", [""])[0])
        stripped, token, cookies = take_credentials(request)
        try:
            if self.private:
                await self.gateway.access.admit(label, token, cookies)
        except AccessRefused as e:
            await self._refuse(request, str(e))
            return False
        except Exception as e:
            log.warning("could not check access to endpoint %s: %s", label, e)
            await self._answer(503, "The gateway cannot reach its store just now; try again shortly.", close=True)
            return False
        if self.service is None and not await self._open_service():
            return False
        self._to_service(stripped)
        await self.up_writer.drain()
        return True

    async def _hop(self, request: h11.Request, token: str) -> bool:
        """Trade a hop pass for the access cookie on this host, and send the browser on to /."""
        try:
            value = await self.gateway.access.trade_hop(self.forward.label, token)
        except AccessRefused as e:
            await self._refuse(request, str(e))
            return False
        except Exception as e:
            log.warning("could not check a hop to endpoint %s: %s", self.forward.label, e)
            await self._answer(503, "The gateway cannot reach its store just now; try again shortly.", close=True)
            return False
        secure = "; Secure" if _header(request, b"x-forwarded-proto").lower() == b"https" else ""
        cookie = f"{COOKIE}={value}; Path=/; Max-Age={COOKIE_TTL_S}; HttpOnly; SameSite=Lax{secure}"
        # The pass is in this URL: no Referer carries it on, and nothing keeps the answer.
        await self._answer(303, "Signed in to this endpoint; on to its service.", extra=[
            ("Location", "/"), ("Set-Cookie", cookie), ("Referrer-Policy", "no-referrer")], close=True)
        return False

    async def _refuse(self, request: h11.Request, sentence: str) -> None:
        """403 with a sentence; for a browser, a small page that links to the job's page to sign in."""
        if b"text/html" not in _header(request, b"accept"):
            await self._answer(403, sentence, close=True)
            return
        holder = await self.gateway.access.holder(self.forward.label)
        dashboard = self.gateway.settings.dashboard_url
        if holder is not None and dashboard:
            where = f'<a href="{html.escape(dashboard)}/jobs/{holder.job_id}">its job\'s page</a>'
        else:
            where = "its job's page"
        page = (
            "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            "<title>Private endpoint</title>"
            "<body style='font:16px system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em'>"
            f"<h1>This endpoint is private</h1><p>{html.escape(_capital(sentence.removeprefix('This endpoint is private: ')))}</p>"
            f"<p>Its job's owner opens it by signing in to the peergrid dashboard and following its link on {where}.</p>"
        )
        await self._answer(403, page, close=True, html_body=True)

    async def _answer(self, status: int, sentence: str, *, close: bool, extra=(), html_body: bool = False) -> None:
        """The gateway's own answer to the request now being read."""
        body = (sentence if html_body else sentence + "\n").encode()
        headers = [("Content-Type", "text/html; charset=utf-8" if html_body else "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), *extra]
        if close:
            headers.append(("Connection", "close"))
        try:
            data = self.client.send(h11.Response(status_code=status, headers=headers))
            data += self.client.send(h11.Data(data=body)) + self.client.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        self.writer.write(data)
        await self.writer.drain()

    async def _open_service(self) -> bool:
        forward = self.forward
        try:
            self.up_reader, self.up_writer = await forward.connection.open_connection(
                forward.label, forward.port, str(self.peer[0]), int(self.peer[1])
            )
        except (asyncssh.Error, ConnectionError, OSError) as e:
            log.info("could not open a channel to endpoint %s: %s", forward.label, e)
            await self._answer(502, "The service's node did not take the connection; try again shortly.", close=True)
            return False
        self.service = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._answering = asyncio.get_running_loop().create_task(self._from_service())
        return True

    def _to_service(self, event) -> None:
        self.up_writer.write(self.service.send(event))

    async def _pipe_from_client(self) -> bool:
        """After a switch of protocol: the client's bytes go to the service as they are."""
        await _pipe_after_switch(self.client, self.reader, self.up_writer)
        return True

    def _next_cycle(self) -> None:
        """Once both sides of both connections are done with a request and its answer, take the next."""
        states = (self.client.our_state, self.client.their_state)
        if self.service is not None:
            states += (self.service.our_state, self.service.their_state)
        if all(state is h11.DONE for state in states):
            self.client.start_next_cycle()
            if self.service is not None:
                self.service.start_next_cycle()
            self._wake.set()

    def _end(self) -> None:
        """The connection is over: wake the client side, and close the client's socket so a read
        under way returns."""
        self._ended = True
        self._wake.set()
        self.writer.close()

    # -- the service's side --------------------------------------------------------------------

    async def _from_service(self) -> None:
        """Read the service's answers and send them on to the client as they come."""
        try:
            while True:
                try:
                    event = self.service.next_event()
                except h11.RemoteProtocolError as e:
                    log.info("endpoint %s answered what is not HTTP/1.1: %s", self.forward.label, e)
                    if self.client.our_state is h11.SEND_RESPONSE:
                        await self._answer(502, "The service's answer was not HTTP/1.1 the gateway can read.", close=True)
                    break
                if event is h11.NEED_DATA:
                    self.service.receive_data(await self.up_reader.read(CHUNK))
                elif event is h11.PAUSED:
                    if self.service.their_state is h11.SWITCHED_PROTOCOL:
                        await self._pipe_from_service()
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    if self._ended:
                        return
                elif isinstance(event, h11.InformationalResponse):
                    self.writer.write(self.client.send(event))
                    await self.writer.drain()
                    if event.status_code == 101:
                        self._wake.set()
                elif isinstance(event, h11.Response):
                    headers = [(n, v) for n, v in event.headers.raw_items()
                               if not (n.lower() == b"set-cookie" and v.lstrip().startswith(_COOKIE + b"="))]
                    self.writer.write(self.client.send(h11.Response(
                        status_code=event.status_code, headers=headers, reason=event.reason)))
                elif isinstance(event, h11.Data):
                    self.writer.write(self.client.send(h11.Data(data=event.data)))
                    await self.writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    self.writer.write(self.client.send(h11.EndOfMessage(headers=event.headers)))
                    await self.writer.drain()
                    self._next_cycle()
                    # A side that must close after this answer (Connection: close, or a service
                    # answer framed by closing) ends the client's connection too.
                    if h11.MUST_CLOSE in (self.client.our_state, self.service.their_state):
                        break
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.LocalProtocolError as e:
            log.info("could not pass endpoint %s's answer on: %s", self.forward.label, e)
        except (ConnectionError, OSError, asyncssh.Error):
            pass
        self._end()

    async def _pipe_from_service(self) -> None:
        """After a switch of protocol: the service's bytes go to the client as they are."""
        await _pipe_after_switch(self.service, self.up_reader, self.writer)


async def _pipe_after_switch(side: h11.Connection, reader, writer) -> None:
    """Pass on what h11 read past the switch of protocol on side, then the rest of reader's bytes."""
    data, closed = side.trailing_data
    if data:
        writer.write(data)
    if not closed:
        await pipe(reader, writer)
    elif writer.can_write_eof():
        writer.write_eof()


async def serve_read(gateway: "Gateway", forward: "Forward", reader, writer, head: bytes, peer, *, private: bool) -> None:
    """Serve one client connection, reading its requests; checking their callers if private."""
    await ReadConnection(gateway, forward, reader, writer, peer, private=private).run(head)
