"""The gateway's HTTP front: read a request's head, find its endpoint by the first label of its
Host header, and pipe the connection's bytes both ways through a channel of the node's tunnel.

For a public endpoint bytes are piped, not requests: keep-alive, chunked and streamed answers, and
WebSocket upgrades pass as they are, and nothing is buffered beyond one read. A private endpoint's
connections go to gateway.access, which reads each request to check its caller; so does a public
endpoint's connection whose first request carries peergrid credentials, which it takes out. (A
later request on a public endpoint's piped connection is not read: a client that sends its API
token to someone else's public service on some requests only is not protected from itself.)"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncssh

from gateway.access import carries_credentials, serve_read
from gateway.pipes import MAX_HEAD, pipe  # noqa: F401 (MAX_HEAD: the read limit gateway.service sets)

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

# How long a client may take to send its request's head.
HEAD_TIMEOUT_S = 30.0


def host_label(head: bytes) -> str | None:
    """The first DNS label of the Host header of a request head, lowercased; None without one."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = value.strip().decode("latin-1").lower()
            label = host.split(".", 1)[0].split(":", 1)[0]
            return label or None
    return None


def answer(status: int, reason: str, sentence: str) -> bytes:
    """A small complete HTTP answer whose body is one sentence."""
    body = (
        f"<!doctype html><title>{status} {reason}</title><p>{sentence}</p>\n"
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
    ).encode() + body


async def serve(gateway: "Gateway", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one client connection."""
    peer = writer.get_extra_info("peername") or ("?", 0)
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            return
        label = host_label(head)
        forward = gateway.forwards.get(label) if label else None
        if forward is None:
            writer.write(await gateway.refusal(label))
            await writer.drain()
            return
        private = forward.private or gateway.settings.private_endpoints
        if private or carries_credentials(head):
            await serve_read(gateway, forward, reader, writer, head, peer, private=private)
            return
        try:
            up_reader, up_writer = await forward.connection.open_connection(
                forward.label, forward.port, str(peer[0]), int(peer[1])
            )
        except (asyncssh.Error, ConnectionError, OSError) as e:
            log.info("could not open a channel to endpoint %s: %s", label, e)
            writer.write(answer(502, "Bad Gateway", "The service's node did not take the connection; try again shortly."))
            await writer.drain()
            return
        up_writer.write(head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        up_writer.close()
    except (ConnectionError, OSError) as e:
        log.info("a connection from %s:%s to the gateway dropped: %s", peer[0], peer[1], e)
    except asyncio.CancelledError:
        pass  # the gateway is stopping; the connection goes with it
    finally:
        writer.close()
