"""The gateway's HTTP front: read a request's head, find its endpoint by the first label of its
Host header, and pipe the connection's bytes both ways through a channel of the node's tunnel.

Bytes are piped, not requests: keep-alive, chunked and streamed answers, and WebSocket upgrades
pass as they are, and nothing is buffered beyond one read."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncssh

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

# The most a request's head may hold before the gateway gives up on it.
MAX_HEAD = 64 * 1024
# How long a client may take to send its request's head.
HEAD_TIMEOUT_S = 30.0
CHUNK = 64 * 1024


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


async def _pipe(reader, writer) -> None:
    """Copy reader to writer until end of file, then pass the end of file on."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, asyncssh.Error, OSError):
        pass


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
        if forward.private:
            writer.write(answer(
                403, "Forbidden",
                "This endpoint is private: it opens only for its job's owner, which this gateway cannot check yet.",
            ))
            await writer.drain()
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
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        up_writer.close()
    except (ConnectionError, OSError) as e:
        log.info("a connection from %s:%s to the gateway dropped: %s", peer[0], peer[1], e)
    except asyncio.CancelledError:
        pass  # the gateway is stopping; the connection goes with it
    finally:
        writer.close()
