"""A durable pull consumer's messages, kept flowing into a local buffer.

nats-py's ``fetch`` sends a pull request when it is called and then waits for each
message with a task and a timer of its own: under load that is a large share of what a
host spends per message, and the request's round trip is paid before every batch.
:class:`PullFeed` keeps pull requests outstanding instead, so the next batch is
already here when the last one is done:

- one subscription on a private inbox takes what the server delivers into a buffer,
  straight off the wire when the client is a :class:`~agora.core.received.RawClient`
  (else through nats-py's callback);
- pull requests ask for at most ``batch`` messages beyond what the buffer holds, each
  expiring after ``expires_s``; a request that ends early (408 on expiry, 409 for
  reasons such as a leadership change) says how many it did not deliver, which are
  asked for again;
- if nothing at all arrives (no message, no expiry) for ``expires_s`` plus a grace
  period while messages are asked for, the requests are presumed lost, as after a
  server restart, and made again.

The server drops a waiting request when its inbox loses interest, so a stopped feed
takes nothing more; what it buffered and never handed out is given back (``nak``) at
a graceful stop, to be delivered again at once rather than after ``ack_wait``.
A request that ends (expires, or its consumer is gone) wakes a waiting :meth:`take`,
which asks again (or raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg

from agora.core.errors import AgoraError
from agora.core.received import (
    DESCRIPTION_HEADER,
    STATUS_HEADER,
    JetStreamMessage,
    RawClient,
    Received,
)

API_PREFIX: Final = "$JS.API"
PENDING_HEADER: Final = "Nats-Pending-Messages"
HEARTBEAT: Final = "100"
EXPIRED: Final = "408"
NO_RESPONDERS: Final = "503"  # the request's subject has no consumer behind it
REQUEST_ENDED: Final = frozenset({"404", "408", "409"})
LOST_GRACE_S: Final = 1.0
# a 409 that ends the consumer, not just one request: asking again cannot help
FATAL_409: Final = ("consumer deleted", "consumer is push based")
# a 409 that refuses the request itself, for a limit of the consumer's (such as
# "Exceeded MaxRequestBatch of 4"): every request like it is refused again
REFUSED_409: Final = "exceeded maxrequest"


class PullFeedError(AgoraError):
    """The server ended the consumer (deleted, or replaced by a push consumer)."""


class PullFeed:
    def __init__(
        self, client: Client, *, stream: str, consumer: str, batch: int, expires_s: float = 1.0
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch is {batch}: expected at least 1")
        self._client = client
        self._consumer = consumer
        self._next_subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._expires_s = expires_s
        self._inbox = client.new_inbox()
        self._subscription: Callable[[], Awaitable[None]] | None = None  # its unsubscribe
        self._buffer: deque[JetStreamMessage] = deque()
        self._arrivals: deque[float] = deque()  # when each buffered message arrived
        self.taken_since = 0.0  # when the first of the last messages taken arrived
        self._asked = 0  # asked for, and neither delivered nor given back by the server
        self._last_heard = 0.0
        self._arrived = asyncio.Event()  # a message, an ended request or a failure
        self._failure: str | None = None

    async def start(self) -> None:
        client = self._client
        if isinstance(client, RawClient):
            sid = await client.subscribe_raw(self._inbox, self._on_raw)
            self._subscription = functools.partial(client.unsubscribe_raw, sid)
        else:
            subscription = await client.subscribe(self._inbox, cb=self._on_message)
            self._subscription = subscription.unsubscribe
        self._last_heard = time.monotonic()
        await self._top_up()

    async def stop(self, *, give_back: bool = True) -> None:
        """Stop taking messages; give back (``nak``) what was buffered but not taken."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription()
            self._subscription = None
        if give_back:
            while self._buffer:
                with contextlib.suppress(Exception):
                    await self._buffer.popleft().nak()
        self._buffer.clear()
        self._arrivals.clear()

    async def take(self, limit: int, timeout_s: float) -> list[JetStreamMessage]:
        """Up to ``limit`` messages, waiting at most ``timeout_s`` for the first."""
        if self._subscription is None:
            raise PullFeedError("the feed is not started, or was stopped")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._buffer and self._failure is None:
            self._arrived.clear()  # before asking: what arrives from now on sets it
            await self._top_up()
            left_s = deadline - loop.time()
            if self._buffer or left_s <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left_s):
                    await self._arrived.wait()
        if self._failure is not None:
            raise PullFeedError(self._failure)
        count = min(limit, len(self._buffer))
        if count:
            self.taken_since = self._arrivals[0]
        taken = [self._buffer.popleft() for _ in range(count)]
        for _ in range(count):
            self._arrivals.popleft()
        await self._top_up()
        return taken

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._accept(Received.of(self._client, subject, reply, data, headers))

    async def _on_message(self, message: Msg) -> None:
        self._accept(message)

    def _accept(self, message: JetStreamMessage) -> None:
        self._last_heard = time.monotonic()
        if message.reply:  # a stored message ($JS.ACK...), whatever headers it carries
            self._buffer.append(message)
            self._arrivals.append(time.monotonic())
            self._asked = max(0, self._asked - 1)
            self._arrived.set()
            return
        headers = message.headers  # else the server's answer to a request: a status
        status = headers.get(STATUS_HEADER) if headers else None
        if headers is None or status is None or status == HEARTBEAT:
            return
        # nats-py keys the description by an Enum member equal to, but not hashed as,
        # the string "Description"
        description = next((v for k, v in headers.items() if k == DESCRIPTION_HEADER), "")
        if status in REQUEST_ENDED:
            unused = headers.get(PENDING_HEADER, "")
            counted = unused.isascii() and unused.isdigit()
            self._asked = max(0, self._asked - int(unused)) if counted else 0
            if status == "409" and description.lower().startswith(FATAL_409):
                self._failure = f"the consumer is gone: {description}"
            elif status == "409" and description.lower().startswith(REFUSED_409):
                self._failure = (
                    f"the consumer {self._consumer!r} refuses pull requests for {self._batch} "
                    f"messages: {description}; its limits must allow the agent's batch"
                )
            elif status != EXPIRED:
                return  # asked again at the next take
        elif status == NO_RESPONDERS:
            self._failure = f"the consumer {self._consumer!r} is gone: no one answered (503)"
        else:
            self._failure = f"the server answered a pull request with {status} {description}"
        self._arrived.set()  # a waiting take asks again now (an expiry), or raises

    async def _top_up(self) -> None:
        """Ask for more when at least half a batch is missing (or nothing is asked)."""
        if self._subscription is None or self._failure is not None:
            return
        now = time.monotonic()
        if self._asked and now - self._last_heard > self._expires_s + LOST_GRACE_S:
            self._asked = 0  # nothing heard for longer than a request lives: lost
            self._last_heard = now
        wanted = self._batch - self._asked - len(self._buffer)
        if wanted <= 0 or (self._asked and wanted < (self._batch + 1) // 2):
            return
        request = {"batch": wanted, "expires": int(self._expires_s * 1e9)}
        await self._client.publish(
            self._next_subject, json.dumps(request).encode(), reply=self._inbox
        )
        self._asked += wanted
