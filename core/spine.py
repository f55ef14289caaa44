"""The JetStream spine: one stream for every fact, one subject per channel.

Channel ``build-coord`` is subject ``agora.ch.build-coord``; the events the host and the
bridge record go to ``agora.ev.<identity>`` in the same stream, so the stream's order
is the order facts are recorded in (an event always comes after the act it concerns).
Channel names are checked before they become subjects, so no name can reach another
subject (``.``, ``*`` and ``>`` are refused). Every publish carries ``Nats-Msg-Id`` =
the fact's id, so a repeat within the stream's duplicate window is dropped by the
server.

Beside the stream, three key-value buckets:

- ``agora-control``: the out-of-band kill switch (keys ``all``, ``agent.<name>``,
  ``channel.<name>``; each value a signed ``killed``/``resumed``/``quarantined`` event);
- ``agora-agents``: each agent's saved state, progress and unsent outbox;
- ``agora-status``: each host's counters, for ``agora status``.

Messages a consumer gave up on after ``max_deliver`` attempts are announced by the
server as advisories, which the ``AGORA_DEAD`` stream keeps (the dead-letter place).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from agora.core.acts import check_channel, check_name
from agora.core.received import MSG_ID_HEADER, PUBLISH_TIMEOUT_S, JetStreamMessage

STREAM: Final = "AGORA"
CHANNEL_SUBJECT_PREFIX: Final = "agora.ch."
EVENT_SUBJECT_PREFIX: Final = "agora.ev."
DUPLICATE_WINDOW_S: Final = 120.0
WINDOW_MS: Final = int(DUPLICATE_WINDOW_S * 1000)
# An act stored later than this after it was signed is refused as a stale copy: within
# it, JetStream's duplicate window drops a copy published under the act's own id.
FRESH_FOR_MS: Final = WINDOW_MS * 3 // 4
# Publishing a fact again under its own id is safe without a look in the stream while
# the duplicate window still covers a first publish (with a margin for clock skew).
SAFE_REPUBLISH_MS: Final = WINDOW_MS // 2
SCAN_QUIET_S: Final = 5.0  # a server slow to answer after a restart is not 'nothing'
CONTROL_BUCKET: Final = "agora-control"
KV_OPERATION_HEADER: Final = "KV-Operation"  # DEL or PURGE on a deletion's marker
CONTROL_HISTORY: Final = 64  # values kept per key: the most a key-value bucket keeps
AGENTS_BUCKET: Final = "agora-agents"
STATUS_BUCKET: Final = "agora-status"
STATUS_KEPT_S: Final = 7 * 24 * 3600.0  # a report no host rewrote for a week is forgotten
DEAD_STREAM: Final = "AGORA_DEAD"
DEAD_SUBJECTS: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.>"
# A JetStream reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...,
# nine tokens; with a domain and an account hash after ACK, eleven or more.
_ACK_TOKENS_SHORT: Final = 9
_STREAM_SEQ_SHORT: Final = 5
_ACK_TOKENS_LONG: Final = 11
_STREAM_SEQ_LONG: Final = 7
_TIME_AFTER_SEQ: Final = 2  # <stream seq>.<consumer seq>.<time in ns>


def channel_subject(channel: str) -> str:
    return CHANNEL_SUBJECT_PREFIX + check_channel(channel)


def channel_of(subject: str) -> str:
    """The channel a subject on the channel stream belongs to (checked again)."""
    return check_channel(subject.removeprefix(CHANNEL_SUBJECT_PREFIX))


def arrival_channel(subject: str) -> str | None:
    """The channel a message on the stream arrived on, or None for an event subject.
    Raises :class:`~agora.core.errors.InvalidChannel` for a malformed channel subject."""
    return channel_of(subject) if subject.startswith(CHANNEL_SUBJECT_PREFIX) else None


def stream_sequence(message: JetStreamMessage) -> int:
    """A JetStream message's sequence in its stream, read from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    <pending>``, or the longer form with a domain and an account hash); 0 if it carries
    none. nats-py's ``metadata`` parses every field, and the time, at each access."""
    return stream_place(message)[0]


def stream_place(message: JetStreamMessage) -> tuple[int, int]:
    """A JetStream message's sequence in its stream and when the stream stored it (ms
    since the epoch), read from its reply subject as :func:`stream_sequence` reads it;
    (0, 0) if it carries none."""
    tokens = (message.reply or "").split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return 0, 0
    if len(tokens) == _ACK_TOKENS_SHORT:
        seq = _STREAM_SEQ_SHORT
    elif len(tokens) >= _ACK_TOKENS_LONG:
        seq = _STREAM_SEQ_LONG
    else:
        return 0, 0
    return int(tokens[seq]), int(tokens[seq + _TIME_AFTER_SEQ]) // 1_000_000


def delivery_count(message: JetStreamMessage) -> int:
    """How many times the consumer has handed this message over, this time included,
    read from its reply subject; 0 if it carries none."""
    tokens = (message.reply or "").split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return 0
    if len(tokens) == _ACK_TOKENS_SHORT:
        return int(tokens[_STREAM_SEQ_SHORT - 1])
    if len(tokens) >= _ACK_TOKENS_LONG:
        return int(tokens[_STREAM_SEQ_LONG - 1])
    return 0


def event_subject(identity: str) -> str:
    return EVENT_SUBJECT_PREFIX + check_name(identity, field="identity")


def stream_config(*, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        subjects=[CHANNEL_SUBJECT_PREFIX + "*", EVENT_SUBJECT_PREFIX + "*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


async def ensure_spine(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the stream, the dead-letter stream and the buckets, or update them."""
    await _ensure_stream(js, stream_config(replicas=replicas))
    await _ensure_stream(
        js,
        StreamConfig(
            name=DEAD_STREAM,
            subjects=[DEAD_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
    )
    buckets = (
        (CONTROL_BUCKET, CONTROL_HISTORY, 0.0),
        (AGENTS_BUCKET, 1, 0.0),
        (STATUS_BUCKET, 1, STATUS_KEPT_S),
    )
    for bucket, history, ttl in buckets:
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=history, ttl=ttl or None, replicas=replicas)
            )
            continue
        kept = (await js.stream_info(f"KV_{bucket}")).config  # maybe made by an older version
        wanted = replace(
            kept,
            max_msgs_per_subject=max(kept.max_msgs_per_subject or 0, history),
            max_age=ttl or kept.max_age,
        )
        if wanted != kept:
            await js.update_stream(wanted)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


def agent_consumer_name(agent: str) -> str:
    return "agent-" + check_name(agent, field="agent")


def agent_consumer_config(
    agent: str, channels: Sequence[str], *, ack_wait_s: float, max_deliver: int, batch: int
) -> ConsumerConfig:
    """A durable pull consumer that sees exactly the agent's granted channels.

    Acks are explicit; a message not acked within ``ack_wait_s`` is redelivered at most
    ``max_deliver`` times in all, after which the server's advisory lands in the
    dead-letter stream. A new agent starts with the messages published after it was
    created (its durable position survives restarts).
    """
    return ConsumerConfig(
        durable_name=agent_consumer_name(agent),
        filter_subjects=[channel_subject(c) for c in channels],
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=batch * 4,
    )


async def ensure_consumer(js: JetStreamContext, config: ConsumerConfig) -> frozenset[str]:
    """Create a durable consumer, or bring its filter and limits up to date. Returns the
    subjects it took before (none for a new one)."""
    name = config.durable_name or ""
    try:
        info = await js.consumer_info(STREAM, name)
    except NotFoundError:
        await js.add_consumer(STREAM, config)
        return frozenset()
    await js.add_consumer(STREAM, config)  # same durable name: the server updates it
    before = info.config
    return frozenset(before.filter_subjects or ()) | (
        frozenset({before.filter_subject}) if before.filter_subject else frozenset()
    )


async def bucket_keys(js: JetStreamContext, bucket: str, pattern: str = ">") -> list[str]:
    """The keys of the key-value ``bucket`` matching ``pattern`` (a subject pattern) that
    its stream holds a message under, a deletion's marker among them (a get tells which
    are gone), asked of the stream page by page (the server lists up to 100,000
    subjects in one answer, and says how many there are in all).

    Not nats-py's ``keys()``: it reads them through a watcher that can report the end
    before the first key arrived (the server sent it, so nothing is pending, but the
    client has not counted it yet), and so returns none, or some. Nor its
    ``stream_info``, which asks for the first page only."""
    prefix = f"$KV.{bucket}."
    keys: set[str] = set()
    while True:
        page = await _stream_subjects(js, f"KV_{bucket}", prefix + pattern, offset=len(keys))
        keys.update(subject[len(prefix) :] for subject in page.subjects)
        if not page.subjects or len(keys) >= page.total:
            return sorted(keys)


@dataclass(frozen=True)
class _SubjectsPage:
    subjects: list[str]
    total: int  # how many subjects match in all


async def _stream_subjects(
    js: JetStreamContext, stream: str, subjects_filter: str, *, offset: int
) -> _SubjectsPage:
    """One page of the subjects ``stream`` holds messages under, in the server's order
    (sorted), from ``offset``: the stream info request with the paging nats-py leaves
    out (its own request, so an account's JetStream prefix or domain holds)."""
    request = json.dumps({"subjects_filter": subjects_filter, "offset": offset})
    answer = await js._api_request(  # the request nats-py makes, with an offset
        f"{js._prefix}.STREAM.INFO.{stream}",
        request.encode(),
        timeout=js._timeout,
    )
    subjects = list((answer.get("state") or {}).get("subjects") or {})
    return _SubjectsPage(subjects, int(answer.get("total") or len(subjects)))


async def bucket_values(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Every key of the key-value ``bucket`` that holds a value, with it (a key deleted,
    or deleted meanwhile, is not among them): :func:`bucket_keys`, then each read."""
    kv = await js.key_value(bucket)
    found: dict[str, bytes] = {}
    for key in await bucket_keys(js, bucket):
        try:
            found[key] = (await kv.get(key)).value or b""
        except KeyNotFoundError:
            continue
    return found


async def bucket_history(js: JetStreamContext, bucket: str, key: str) -> list[KeyValue.Entry]:
    """Every value the key-value ``bucket`` still holds under ``key``, oldest first, a
    deletion's marker too (its ``operation`` says so), read from the stream one message
    at a time. Not nats-py's ``history()``: it reads them through a watcher that can
    report the end before the first arrived (see :func:`bucket_keys`)."""
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
    entries: list[KeyValue.Entry] = []
    seq = 1
    while True:
        try:
            message = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return entries
        headers = message.headers or {}
        entries.append(
            KeyValue.Entry(
                bucket=bucket,
                key=key,
                value=message.data,
                revision=message.seq,
                delta=None,
                created=None,
                operation=headers.get(KV_OPERATION_HEADER),
            )
        )
        seq = (message.seq or seq) + 1


async def publish_fact(js: JetStreamContext, *, subject: str, msg_id: str, envelope: bytes) -> bool:
    """Publish a signed envelope; False if JetStream saw its id already."""
    ack = await js.publish(subject, envelope, headers={MSG_ID_HEADER: msg_id})
    return not ack.duplicate


async def publish_all(
    js: JetStreamContext,
    items: Iterable[tuple[str, str, bytes]],
    *,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> None:
    """Publish signed envelopes, each ``(subject, msg_id, envelope)``, pipelined in order
    on one connection, and wait until JetStream acknowledged every one (a repeat of an
    id counts as acknowledged). Raises what a refused publish raised, or TimeoutError."""
    futures: list[asyncio.Future[Any]] = []

    async def publish_and_wait() -> None:
        for subject, msg_id, envelope in items:
            # the window's wait is bounded by the timeout around the whole (a per-message
            # wait_stall would cost a task and a timer for every message)
            futures.append(
                await js.publish_async(subject, envelope, headers={MSG_ID_HEADER: msg_id})
            )
        await asyncio.gather(*futures)

    try:
        async with asyncio.timeout(timeout_s):
            await publish_and_wait()
    finally:
        for future in futures:  # what never came back frees its place in the window
            future.cancel()


async def read_in_order(
    js: JetStreamContext,
    *,
    subjects: Iterable[str],
    after_seq: int,
    **options: Any,
) -> Any:
    """An ordered consumer (no gaps, in stream order) over ``subjects`` from stream
    sequence ``after_seq + 1`` on; ``options`` go to nats-py's ``subscribe`` (a
    callback, heartbeats)."""
    return await js.subscribe(
        CHANNEL_SUBJECT_PREFIX + "*",
        stream=STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=after_seq + 1, filter_subjects=sorted(set(subjects))),
        **options,
    )


async def ids_in_stream(
    js: JetStreamContext,
    *,
    subjects: Iterable[str],
    after_seq: int,
    until_ms: int,
    wanted: Iterable[str],
    quiet_s: float = SCAN_QUIET_S,
    held: dict[str, bytes] | None = None,
) -> dict[str, int]:
    """Which of the ``wanted`` message ids are in the stream on ``subjects``, and when
    the stream stored each (ms since the epoch), looking from ``after_seq + 1`` on, up
    to the first message stored after ``until_ms``, or the end of the stream; ``held``,
    if given, gets the bytes stored under each id found.

    For what JetStream's duplicate window no longer covers: whether an outbox saved
    long ago was published before a crash (and in time to be taken as fresh)."""
    wanted = set(wanted)
    found: dict[str, int] = {}
    subscription = await read_in_order(js, subjects=subjects, after_seq=after_seq)
    try:
        while len(found) < len(wanted):
            try:
                message = await subscription.next_msg(timeout=quiet_s)
            except TimeoutError:
                break  # nothing more on these subjects
            metadata = message.metadata
            stored_ms = int(metadata.timestamp.timestamp() * 1000)
            if stored_ms > until_ms:
                break
            ident = (message.headers or {}).get(MSG_ID_HEADER)
            if ident in wanted and ident not in found:
                found[ident] = stored_ms
                if held is not None:
                    held[ident] = message.data
            if not metadata.num_pending:
                break
    finally:
        await subscription.unsubscribe()
    return found


async def publish_envelope(
    js: JetStreamContext, *, channel: str, msg_id: str, envelope: bytes
) -> bool:
    """Publish a signed act to its channel; False if JetStream saw its id already."""
    return await publish_fact(
        js, subject=channel_subject(channel), msg_id=msg_id, envelope=envelope
    )
