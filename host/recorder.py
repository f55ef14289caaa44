"""The recorder: the one writer that turns the stream into the fact log.

It reads the whole stream (every channel and every event subject) in order through
its own durable consumer, checks each envelope with the same rule ``agora verify``
applies (:func:`agora.core.admission.admit`), appends it, fsyncs the batch, and only
then acknowledges it. A crash before the acknowledgement redelivers the batch; facts
already in the log are recognised by id and skipped, so each fact is recorded exactly
once. An envelope that fails the rule is not recorded; a signed ``refused`` event
naming it is published instead, so the refusal itself is a fact.

Envelopes the host in the same process already signed or verified are not verified a
second time (:class:`~agora.host.vouched.Vouched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

from agora.core.envelope import Event, EventKind, Fact
from agora.core.errors import InputError
from agora.core.factlog import FactLog
from agora.core.ids import now_ms
from agora.core.keys import SigningKey
from agora.core.signing import sign_fact
from agora.host.spine import (
    CHANNEL_SUBJECT_PREFIX,
    RECORDER_CONSUMER,
    STREAM,
    channel_of,
    ensure_consumer,
    event_subject,
    publish_fact,
)
from agora.host.tasks import finish
from agora.host.vouched import Vouched

log = logging.getLogger(__name__)

FETCH_BATCH: Final = 512
FETCH_WAIT_S: Final = 0.25


@dataclass(slots=True)
class RecorderCounters:
    recorded: int = 0
    repeated: int = 0
    refused: int = 0


class Recorder:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        factlog: FactLog,
        host_key: SigningKey,
        vouched: Vouched,
        checkpoint_every: int,
    ) -> None:
        self._js = js
        self._log = factlog
        self._key = host_key
        self._vouched = vouched
        self._checkpoint_every = checkpoint_every
        self._ids = factlog.fact_ids()
        self._since_checkpoint = 0
        self.counters = RecorderCounters()
        self.idle = asyncio.Event()
        self.observers: list[Callable[[Fact], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        await ensure_consumer(
            self._js,
            ConsumerConfig(
                durable_name=RECORDER_CONSUMER,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=60.0,
                max_ack_pending=FETCH_BATCH * 4,
            ),
        )
        subscription = await self._js.pull_subscribe_bind(RECORDER_CONSUMER, stream=STREAM)
        self._subscription = subscription
        self._task = asyncio.create_task(self._run(subscription), name="agora-recorder")

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop after the batch in hand (graceful), or at once, as a crash would."""
        await finish(self._task, self._stopping, graceful=graceful)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        self._log.close()  # checkpoints what was recorded

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except (FetchTimeoutError, TimeoutError):
                self.idle.set()
                continue
            self.idle.clear()
            try:
                await self.record(messages)
            except Exception:
                log.exception("recorder: batch not recorded; it will be redelivered")
                await asyncio.sleep(1.0)

    async def record(self, messages: list[Msg]) -> None:
        """Append a fetched batch, fsync it, then acknowledge it."""
        refusals: list[Event] = []
        appended: list[Fact] = []
        for message in messages:
            self._append(message, appended=appended, refusals=refusals)
        self._log.sync()
        for event in refusals:
            envelope = sign_fact(event, self._key)
            self._vouched.add(envelope, event, self._key.name)
            await publish_fact(
                self._js, subject=event_subject(self._key.name), msg_id=event.id, envelope=envelope
            )
        for message in messages:
            await message.ack()
        if self.observers:
            for fact in appended:
                for observer in self.observers:
                    observer(fact)
        if self._since_checkpoint >= self._checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        self._log.checkpoint()
        self._since_checkpoint = 0

    def _append(self, message: Msg, *, appended: list[Fact], refusals: list[Event]) -> None:
        """Append one message's fact, or note why it cannot be recorded."""
        try:
            fact, _ = self._vouched.admit(message.data, channel=_channel_of(message))
        except InputError as exc:
            self.counters.refused += 1
            refusals.append(_unverified(message, exc, self._key.name))
            return
        if fact.id in self._ids:
            self.counters.repeated += 1
            return
        self._log.append(message.data, fact)
        self._ids.add(fact.id)
        self.counters.recorded += 1
        self._since_checkpoint += 1
        appended.append(fact)


def _unverified(message: Msg, problem: InputError, host: str) -> Event:
    # The id follows from the refused bytes, so a redelivery refuses under the same id.
    digest = hashlib.sha256(message.data).hexdigest()[:32]
    return Event(
        id=f"ev-unverified-{digest}",
        kind=EventKind.REFUSED,
        actor=host,
        time_ms=now_ms(),
        reason="unverified",
        detail=str(problem)[:1000],
        data={"subject": message.subject[:200], "stream_seq": str(_seq(message))},
    )


def _channel_of(message: Msg) -> str | None:
    subject = message.subject
    return channel_of(subject) if subject.startswith(CHANNEL_SUBJECT_PREFIX) else None


def _seq(message: Msg) -> int:
    return message.metadata.sequence.stream if message.metadata.sequence else 0
