"""Publishing bytes to a NATS server as they are, past what nats-py would send: a subject
that is not UTF-8, a header given twice. Anyone who can connect can send these."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


async def publish_raw(url: str, subject: bytes, data: bytes, headers: bytes | None = None) -> None:
    """Publish one message over a connection of its own; return once the server has read
    it (its PONG to a PING sent after it)."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        await reader.readline()  # the server's INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        if headers is None:
            writer.write(b"PUB %b %d\r\n%b\r\n" % (subject, len(data), data))
        else:
            size = len(headers) + len(data)
            writer.write(
                b"HPUB %b %d %d\r\n%b%b\r\n" % (subject, len(headers), size, headers, data)
            )
        writer.write(b"PING\r\n")
        await writer.drain()
        while not (line := await reader.readline()).startswith(b"PONG"):
            if not line or line.startswith(b"-ERR"):
                raise ConnectionError(f"the server refused the message: {line!r}")
    finally:
        writer.close()
