"""Bytes piped as they come, which is how the gateway carries a connection it does not read."""

from __future__ import annotations

import asyncssh

# The most a request's head may hold before the gateway gives up on it.
MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024


async def pipe(reader, writer) -> None:
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
