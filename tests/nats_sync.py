"""Waiting until the server has read what a client sent, which nats-py's flush() does not
promise."""

from __future__ import annotations

import contextlib

from nats.aio.client import Client
from nats.errors import NoRespondersError

_NOBODY = "agora.test.settled"  # a subject no test subscribes


async def settled(client: Client) -> None:
    """Return once the server has read every command ``client`` sent before this call.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands still
    waiting for the client's flusher task (a SUB or a PUB among them), so its PONG proves
    nothing about them. A request goes out behind them, and the server answers it (here
    with "no responders") only after reading all that came before on the connection."""
    with contextlib.suppress(NoRespondersError):
        await client.request(_NOBODY, b"", timeout=5)
