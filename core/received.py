"""JetStream messages taken straight off the wire, for the host's busiest subscriptions.

nats-py turns every message it reads into a ``Msg``: it parses the header block in a
coroutine of its own, builds the object, queues it for the subscription's task, and
that task wakes to hand it to the callback, about 5 µs and a turn of the event loop
per message. A host reads several messages for each act it handles (the act and its
reply come back to the agent's consumer and to the recorder), so :class:`RawClient`
lets a subscription take them as they are parsed instead: its handler is called with
the wire's bytes, synchronously, and builds a :class:`Received`, which has what the
host reads of a message (subject, reply, data, headers) and acknowledges it the way
nats-py's ``Msg`` does. Every other subscription goes through nats-py as before, but
with its header blocks read by :func:`parse_headers`.

JetStream's acknowledgements of the host's publishes come the same way
(:meth:`RawClient.publish_acked`): nats-py's ``publish_async`` spends a timer, a
semaphore and random bytes on each message, and queues each acknowledgement for a task.
So do the server's confirmations of the host's own acknowledgements
(:meth:`RawClient.acknowledge_confirmed`), one for each message of a batch.

The header block is ``NATS/1.0[ <status>[ <description>]]\\r\\n`` then ``Name: Value``
lines; a status (100 heartbeat, 404/408/409 for an ended pull request, 503 for no
responders) comes in ``Status`` and ``Description``, as nats-py reports them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

from nats.aio.client import Client
from nats.js.errors import APIError, NoStreamResponseError

log = logging.getLogger(__name__)

STATUS_HEADER: Final = "Status"
DESCRIPTION_HEADER: Final = "Description"
_VERSION_LINE: Final = b"NATS/1.0"
_ACK: Final = b"+ACK"
_NAK: Final = b"-NAK"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
PUBLISH_TIMEOUT_S: Final = 5.0  # nats-py's own default for one JetStream publish
_NO_RESPONDERS: Final = "503"

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
AnswerReader = Callable[[bytes, bytes | None], Exception | None]  # (data, header block)


class JetStreamMessage(Protocol):
    """What the host reads of a message: nats-py's ``Msg`` and :class:`Received` both."""

    subject: str
    reply: str
    data: bytes

    @property
    def headers(self) -> dict[str, str] | None: ...

    async def ack(self) -> None: ...

    async def ack_sync(self, timeout: float = ...) -> object: ...  # noqa: ASYNC109 - as nats-py's

    async def nak(self) -> None: ...


class Received:
    """One message as :class:`RawClient` hands it over."""

    __slots__ = ("_client", "data", "headers", "reply", "subject")

    def __init__(
        self, client: Client, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
    ) -> None:
        self._client = client
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers

    @classmethod
    def of(
        cls, client: Client, subject: bytes, reply: bytes, data: bytes, raw: bytes | None
    ) -> Received:
        """A message as read off the wire. A subject that is not UTF-8 (anyone may publish
        one) is read with its bad bytes escaped, so the message is still handed over, to
        be refused as what it is, rather than dropped unseen (a gap the recorder would
        read again for good)."""
        return cls(client, _text(subject), _text(reply), data, parse_headers(raw))

    async def ack(self) -> None:
        await self._client.publish(self.reply, _ACK)

    async def ack_sync(self, timeout: float = 1.0) -> None:  # noqa: ASYNC109 - as nats-py's
        """Acknowledge and wait for the server to confirm it (nats-py raises
        ``TimeoutError`` if it does not answer in time)."""
        await self._client.request(self.reply, _ACK, timeout=timeout)

    async def nak(self) -> None:
        await self._client.publish(self.reply, _NAK)

    def __repr__(self) -> str:
        return f"Received(subject={self.subject!r}, reply={self.reply!r}, {len(self.data)} bytes)"


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """The header block's fields, with a status line's code and description under
    :data:`STATUS_HEADER` and :data:`DESCRIPTION_HEADER`; None for no block. A line
    that is not ``Name: Value`` is skipped, as nats-py skips it. A field given twice
    with different values reads as empty: which one counts is not for a publisher to
    blur (the server takes the first ``Nats-Msg-Id`` for its duplicate check, nats-py
    the last; a copy of an act published again under a fresh first id and its own
    second one would pass for the original)."""
    if not raw:
        return None
    lines = raw.split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name and b" " not in name and b"\t" not in name:
            key = name.decode("ascii", "replace")
            text = value.strip().decode("utf-8", "replace")
            if headers.get(key, text) != text:
                text = ""
            headers[key] = text
    # a status comes only in the first line: a field of that name is a publisher's
    headers.pop(STATUS_HEADER, None)
    headers.pop(DESCRIPTION_HEADER, None)
    first = lines[0]
    if first.startswith(_VERSION_LINE) and len(first) > len(_VERSION_LINE):
        status, _, description = first[len(_VERSION_LINE) :].strip().partition(b" ")
        if status.isascii() and status.isdigit():
            headers[STATUS_HEADER] = status.decode()
            if description:
                headers[DESCRIPTION_HEADER] = description.decode("utf-8", "replace")
    return headers


class RawClient(Client):
    """A nats-py client some of whose subscriptions take messages straight off the wire
    (:meth:`subscribe_raw`). Everything else about it is nats-py's: the connection,
    reconnecting (which subscribes these again too), publishing, requests."""

    def __init__(self) -> None:
        super().__init__()
        self._raw: dict[int, RawHandler] = {}
        self._acks_prefix: bytes | None = None  # the inbox JetStream acknowledges to
        self._acks_ready = asyncio.Lock()
        self._tokens = itertools.count()
        # what each answer on the inbox is awaited by, and how it is read
        self._awaiting: dict[int, tuple[asyncio.Future[Exception | None], AnswerReader]] = {}

    async def publish_acked(
        self,
        items: Iterable[tuple[str, str, bytes]],
        *,
        timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        """Publish to JetStream each ``(subject, msg_id, data)``, pipelined in order, with
        ``msg_id`` as ``Nats-Msg-Id``, and wait until the stream acknowledged every one
        (a repeat of an id counts as acknowledged). Raises what the server refused the
        first refused one with, or TimeoutError; as nats-py's ``publish_async`` would."""
        prefix = await self._acks_inbox()
        tokens: list[int] = []
        answers: list[asyncio.Future[Exception | None]] = []
        try:
            async with asyncio.timeout(timeout_s):
                for subject, msg_id, data in items:
                    reply = self._expect(prefix, _refusal, tokens, answers)
                    await self.publish(subject, data, reply=reply, headers={MSG_ID_HEADER: msg_id})
                refusals = await asyncio.gather(*answers)
        finally:
            self._forget(tokens)  # what never came back frees its place
        for refusal in refusals:
            if refusal is not None:
                raise refusal

    async def acknowledge_confirmed(
        self, replies: Sequence[str]
    ) -> asyncio.Future[list[Exception | None]]:
        """Acknowledge each message (by its ``reply`` subject), each asking the server to
        confirm it, pipelined; return what completes with an answer for each, in order
        (None for a confirmation). Cancelling it gives up on those still missing."""
        prefix = await self._acks_inbox()
        tokens: list[int] = []
        answers: list[asyncio.Future[Exception | None]] = []
        try:
            for reply in replies:
                answer_to = self._expect(prefix, _unconfirmed, tokens, answers)
                await self.publish(reply, _ACK, reply=answer_to)
        except BaseException:
            self._forget(tokens)
            raise
        every = asyncio.gather(*answers)
        every.add_done_callback(lambda _: self._forget(tokens))
        return every

    def _expect(
        self,
        prefix: bytes,
        read: AnswerReader,
        tokens: list[int],
        answers: list[asyncio.Future[Exception | None]],
    ) -> str:
        """A reply subject on the inbox for one answer, read by ``read``; its token and
        the future it completes are added to ``tokens`` and ``answers``."""
        token = next(self._tokens)
        answer: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._awaiting[token] = (answer, read)
        tokens.append(token)
        answers.append(answer)
        return (prefix + b"%d" % token).decode()

    def _forget(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            entry = self._awaiting.pop(token, None)
            if entry is not None:
                entry[0].cancel()  # no-op for one answered

    async def _acks_inbox(self) -> bytes:
        async with self._acks_ready:
            if self._acks_prefix is None:
                prefix = self.new_inbox() + "."
                await self.subscribe_raw(prefix + "*", self._on_ack)
                self._acks_prefix = prefix.encode()
        return self._acks_prefix

    def _on_ack(self, subject: bytes, _reply: bytes, data: bytes, raw: bytes | None) -> None:
        prefix = self._acks_prefix or b""
        token = subject[len(prefix) :]
        entry = self._awaiting.pop(int(token), None) if token.isdigit() else None
        if entry is None or entry[0].done():
            return  # given up on already
        answer, read = entry
        answer.set_result(read(data, raw))

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> int:
        """Subscribe ``subject``; ``handler(subject, reply, data, headers)`` is called
        with each message's bytes as it is read. Returns the subscription's id."""
        subscription = await self.subscribe(subject)
        sid: int = subscription._id  # the id nats-py hands the server
        self._raw[sid] = handler
        return sid

    async def unsubscribe_raw(self, sid: int) -> None:
        self._raw.pop(sid, None)
        subscription = self._subs.get(sid)
        if subscription is not None:
            await subscription.unsubscribe()

    async def _process_plain(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """Hand a message to nats-py, in a form that cannot end its read loop (which then
        stops reading for good, every subscription of the connection with it): a subject
        that is not UTF-8, which nats-py decodes strictly, is handed over with its bad
        bytes escaped. Not dropped: an ordered consumer (a bucket's watcher) would take
        the gap for a lost message and start again at it, for good."""
        subject, reply = _text(subject).encode(), _text(reply).encode()
        try:
            # nats-py's parser passes None for no headers, whatever its annotation says
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("a message on %r could not be taken; it is dropped", subject[:200])
            await self._error_cb(exc)

    async def _process_headers(self, headers: bytes | None) -> dict[str, str] | None:
        """The header block of a message nats-py still handles, read as
        :func:`parse_headers` reads it: several times faster than nats-py's own reading
        (which tests each character of each name in a generator), and a publisher's own
        ``Status`` field no longer passes for the server's."""
        return parse_headers(headers) or None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._raw.get(sid)
        if handler is None:
            await self._process_plain(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception as exc:  # nats-py's read loop stops for good on an exception
            log.exception("a message on %r could not be taken; it is dropped", subject[:200])
            await self._error_cb(exc)


def _text(wire: bytes) -> str:
    """A subject or reply subject as text; bytes that are not UTF-8 escaped."""
    try:
        return wire.decode()
    except UnicodeDecodeError:
        return wire.decode("utf-8", "backslashreplace")


def _unconfirmed(_data: bytes, raw: bytes | None) -> Exception | None:
    """What the server's answer to an acknowledgement says: confirmed (None; an empty
    message), or a status such as 503 (no consumer took it)."""
    headers = parse_headers(raw)
    status = headers.get(STATUS_HEADER) if headers is not None else None
    if status is None:
        return None
    return APIError(description=f"the acknowledgement was answered with status {status}")


def _refusal(data: bytes, raw: bytes | None) -> Exception | None:
    """What JetStream's answer to a publish refuses it with, or None for an ack: an
    object naming the stream and the sequence the message was stored at, as nats-py's
    ``PubAck`` requires."""
    headers = parse_headers(raw)
    if headers is not None and headers.get(STATUS_HEADER) == _NO_RESPONDERS:
        return NoStreamResponseError()
    try:
        answer = json.loads(data)
    except ValueError:
        return APIError(description=f"the server's answer is not JSON: {data[:200]!r}")
    if not isinstance(answer, dict):
        return APIError(description=f"the server's answer is not an object: {data[:200]!r}")
    if "error" in answer:
        return _refused(answer["error"], data)
    if isinstance(answer.get("stream"), str) and type(answer.get("seq")) is int:
        return None
    # something other than a stream answered first (a plain subscriber, say)
    return APIError(
        description=f"the answer names no stream and sequence it was stored at: {data[:200]!r}"
    )


def _refused(error: object, data: bytes) -> APIError:
    """The exception of nats-py's own class for a stream's refusal."""
    if isinstance(error, dict):
        try:
            APIError.from_error(error)  # raises the error's own class
        except APIError as refused:
            return refused
        except (KeyError, TypeError):
            pass
    return APIError(description=f"the server's refusal is unreadable: {data[:200]!r}")
