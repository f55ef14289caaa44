"""A stream's messages on some subjects, in stream order and with none missing.

:class:`OrderedFeed` is an ordered consumer, as nats-py's ``ordered_consumer`` is, but
its messages are taken straight off the wire (see :mod:`agora.core.received`) into a
local buffer that :meth:`OrderedFeed.take` hands out in batches: nats-py's builds an
object for every message and wakes a task of its own to hand each one over, which is
a large share of what a recorder spends per message.

The consumer is an ephemeral push consumer the feed makes itself: no acknowledgements
(nothing is redelivered), flow control, idle heartbeats, starting at a stream sequence.
The server numbers what it delivers (the consumer sequence in the reply subject), so a
message lost on the way (a reconnect, a slow client the server cut off) shows as a
number skipped, or as a heartbeat naming a later last delivery than the feed saw; and
a consumer that is gone shows as silence, no message and no heartbeat for two
heartbeat intervals. Each of these makes the feed start a fresh consumer right after
the last message it buffered, so what it hands out never has a gap or a repeat.

Flow control keeps the buffer bounded: the server stops and asks when it has sent
enough, and the feed answers only once everything sent before the question has been
taken out of the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agora.core.received import DESCRIPTION_HEADER, STATUS_HEADER, RawClient, Received

log = logging.getLogger(__name__)

HEARTBEAT: Final = "100"
LAST_CONSUMER_HEADER: Final = "Nats-Last-Consumer"
STALLED_HEADER: Final = "Nats-Consumer-Stalled"
SILENT_HEARTBEATS: Final = 2  # missed in a row: the consumer is presumed gone
_ACK_PREFIX: Final = b"$JS.ACK."
_ACK_TOKENS_SHORT: Final = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
_ACK_TOKENS_LONG: Final = 12  # with a domain and an account hash after ACK, and a token at the end
_STREAM_SEQ_SHORT: Final = 5
_STREAM_SEQ_LONG: Final = 7


class OrderedFeed:
    def __init__(
        self,
        client: Client,
        *,
        stream: str,
        subjects: Iterable[str],
        after_seq: int,
        heartbeat_s: float,
    ) -> None:
        self._client = client
        self._js = client.jetstream()
        self._stream = stream
        self._subjects = sorted(set(subjects))
        self._heartbeat_s = heartbeat_s
        self._last_seq = after_seq  # the stream sequence of the last message buffered
        self._next_delivery = 1  # the consumer sequence the next message must carry
        self._consumer: str | None = None
        self._unsubscribe: Callable[[], Awaitable[None]] | None = None
        self._generation = 0  # which consumer a message handler belongs to
        self._buffer: deque[Received] = deque()
        self._received = 0  # messages buffered by this consumer, the next one's number
        self._taken = 0  # of those, how many were taken out of the buffer
        self._flow_replies: deque[tuple[int, str]] = deque()  # (answer once taken, to)
        self._last_heard = 0.0
        self._broken: str | None = None  # why the consumer must be made again
        self._arrived = asyncio.Event()
        self.restarts = 0  # consumers made again after a gap, a stall or silence

    async def start(self) -> None:
        await self._open()

    async def stop(self) -> None:
        await self._close()
        self._buffer.clear()

    async def take(self, limit: int, timeout_s: float) -> list[Received]:
        """Up to ``limit`` messages in stream order, waiting at most ``timeout_s`` for
        the first."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self._mend()
            if self._buffer:
                break
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left_s, self._heartbeat_s)):
                    await self._arrived.wait()
        taken = [self._buffer.popleft() for _ in range(min(limit, len(self._buffer)))]
        self._taken += len(taken)
        await self._answer_flow_control()
        return taken

    # -- the consumer -----------------------------------------------------------------

    async def _open(self) -> None:
        """Subscribe a fresh inbox, then make a consumer delivering to it from the
        message after the last one buffered."""
        self._generation += 1
        self._next_delivery = 1
        self._received = self._taken = 0
        self._flow_replies.clear()
        self._broken = None
        inbox = self._client.new_inbox()
        self._unsubscribe = await self._subscribe(inbox, self._generation)
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._last_seq + 1,
            filter_subjects=self._subjects,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self._heartbeat_s,
            inactive_threshold=max(5.0, SILENT_HEARTBEATS * 4 * self._heartbeat_s),
            mem_storage=True,
            num_replicas=1,
        )
        self._last_heard = time.monotonic()
        try:
            info = await self._js.add_consumer(self._stream, config=config)
        except BaseException:
            await self._close()
            raise
        self._consumer = info.name

    async def _subscribe(self, inbox: str, generation: int) -> Callable[[], Awaitable[None]]:
        client = self._client
        if isinstance(client, RawClient):
            handler = functools.partial(self._on_raw, generation)
            sid = await client.subscribe_raw(inbox, handler)
            return functools.partial(client.unsubscribe_raw, sid)
        subscription = await client.subscribe(
            inbox, cb=functools.partial(self._on_message, generation)
        )
        return subscription.unsubscribe

    async def _close(self) -> None:
        self._generation += 1  # whatever the old consumer still sends is ignored
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        consumer, self._consumer = self._consumer, None
        if unsubscribe is not None:
            with contextlib.suppress(Exception):
                await unsubscribe()
        if consumer is not None:
            with contextlib.suppress(Exception):  # gone already, or left to its threshold
                await self._js.delete_consumer(self._stream, consumer)

    async def _mend(self) -> None:
        """Make the consumer again if it lost a message, stalled, or fell silent."""
        silent_s = time.monotonic() - self._last_heard
        if self._broken is None and silent_s > SILENT_HEARTBEATS * self._heartbeat_s:
            self._broken = f"nothing heard for {silent_s:.1f} s"
        if self._broken is None:
            return
        log.warning(
            "ordered feed on %s: %s; reading again from stream sequence %d",
            self._stream,
            self._broken,
            self._last_seq + 1,
        )
        self.restarts += 1
        await self._close()
        await self._open()

    async def _answer_flow_control(self) -> None:
        while self._flow_replies and self._flow_replies[0][0] <= self._taken:
            _, reply = self._flow_replies.popleft()
            await self._client.publish(reply)

    # -- what the server sends ------------------------------------------------------------

    def _on_raw(
        self, generation: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if generation != self._generation or self._broken is not None:
            return
        if reply.startswith(_ACK_PREFIX):
            self._on_stored(Received.of(self._client, subject, reply, data, headers), reply)
        else:
            self._on_status(Received.of(self._client, subject, reply, data, headers))

    async def _on_message(self, generation: int, message: Msg) -> None:
        if generation != self._generation or self._broken is not None:
            return
        received = Received(
            self._client, message.subject, message.reply, message.data, message.headers
        )
        if message.reply.startswith(_ACK_PREFIX.decode()):
            self._on_stored(received, message.reply.encode())
        else:
            self._on_status(received)

    def _on_stored(self, message: Received, reply: bytes) -> None:
        self._last_heard = time.monotonic()
        place = _sequences(reply)
        if place is None:
            self._break(f"a delivery's reply subject is not JetStream's: {reply[:200]!r}")
            return
        stream_seq, delivery = place
        if delivery != self._next_delivery:
            self._break(f"delivery {delivery} came where {self._next_delivery} was due")
            return
        self._next_delivery += 1
        self._last_seq = stream_seq
        self._buffer.append(message)
        self._received += 1
        self._arrived.set()

    def _on_status(self, message: Received) -> None:
        """A heartbeat (which may say the consumer is stalled, waiting for an answer) or
        a flow control question."""
        headers = message.headers or {}
        if headers.get(STATUS_HEADER) != HEARTBEAT:
            return
        self._last_heard = time.monotonic()
        description = headers.get(DESCRIPTION_HEADER, "")
        if description.startswith("FlowControl") and message.reply:
            self._flow_replies.append((self._received, message.reply))
            self._arrived.set()  # a waiting take answers it if everything was taken
            return
        last = headers.get(LAST_CONSUMER_HEADER, "")
        if last.isascii() and last.isdigit() and int(last) != self._next_delivery - 1:
            self._break(
                f"a heartbeat says delivery {last} was sent; the last seen was "
                f"{self._next_delivery - 1}"
            )
            return
        stalled = headers.get(STALLED_HEADER)
        if stalled and not any(reply == stalled for _, reply in self._flow_replies):
            self._flow_replies.append((self._received, stalled))
            self._arrived.set()

    def _break(self, why: str) -> None:
        self._broken = why
        self._arrived.set()  # the next take makes the consumer again


def _sequences(reply: bytes) -> tuple[int, int] | None:
    """(stream sequence, consumer sequence) from a delivery's reply subject."""
    tokens = reply.split(b".")
    if len(tokens) == _ACK_TOKENS_SHORT:
        seq = _STREAM_SEQ_SHORT
    elif len(tokens) >= _ACK_TOKENS_LONG:
        seq = _STREAM_SEQ_LONG
    else:
        return None
    stream_seq, delivery = tokens[seq], tokens[seq + 1]
    if not (stream_seq.isdigit() and delivery.isdigit()):
        return None
    return int(stream_seq), int(delivery)
