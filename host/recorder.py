"""The recorder: the one writer that turns the stream into the fact log.

It reads the whole stream (every channel and every event subject) strictly in stream
order, through an ordered consumer starting after the last message it recorded (kept
in ``FACTS/.position``, beside the log it describes). It checks each envelope with the
same rules ``agora verify`` applies (:func:`agora.core.admission.admit`, and a reply or
event must point at an earlier fact), appends it, fsyncs (one fsync covers every batch
that arrived meanwhile: a group commit), and only then moves the position, which it
saves at most once a second. A crash in between reads those messages
again; facts already in the log are recognised by id and skipped, so each fact is
recorded exactly once and in order. An envelope that fails a rule is not recorded; a
signed ``refused`` event naming it is published instead, so the refusal itself is a fact.

Envelopes the host in the same process already signed or verified are not verified a
second time (:class:`~agora.host.vouched.Vouched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agora.core.envelope import Event, EventKind, Fact, references_of
from agora.core.errors import ConfigError, InputError
from agora.core.factlog import POSITION_FILE, FactLog, FactsSnapshot, envelope_digest
from agora.core.keys import SigningKey
from agora.core.signing import sign_fact
from agora.core.spine import (
    CHANNEL_SUBJECT_PREFIX,
    EVENT_SUBJECT_PREFIX,
    event_subject,
    publish_fact,
    read_in_order,
    stream_sequence,
)
from agora.host.streak import QuickStreak
from agora.host.tasks import finish
from agora.host.vouched import Vouched

log = logging.getLogger(__name__)

FETCH_BATCH: Final = 512
FETCH_WAIT_S: Final = 0.25
SYNC_EVERY_S: Final = 0.05
INLINE_FSYNC_S: Final = 0.001
FSYNC_HISTORY: Final = 8
POSITION_EVERY_S: Final = 1.0
HEARTBEAT_S: Final = 1.0
QUEUE_LIMIT: Final = 8192


@dataclass(slots=True)
class RecorderCounters:
    recorded: int = 0
    repeated: int = 0
    refused: int = 0


class Recorder:
    """Reads the stream in order from the position after the last recorded message."""

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
        self._position_file = factlog.directory / POSITION_FILE
        self.position = read_position(self._position_file)
        self._saved_position = self.position
        self._position_saved_at = 0.0
        self._unsynced_position = self.position
        self._unsynced: list[Fact] = []
        self._last_sync = 0.0
        self._fsync = Fsync(factlog.fsync)
        self._since_checkpoint = 0
        self.counters = RecorderCounters()
        self.observers: list[Callable[[Fact], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agora-recorder")

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop after the batch in hand (graceful), or at once, as a crash would."""
        await finish(self._task, self._stopping, graceful=graceful)
        if graceful:
            self.make_durable()
        self._log.close()  # checkpoints what was recorded

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recorder: reading again from stream sequence %d", self.position + 1)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        """Record from ``position + 1`` on, through an ordered consumer (no gaps, in order)."""
        arrived: asyncio.Queue[Msg] = asyncio.Queue(maxsize=QUEUE_LIMIT)

        async def take(message: Msg) -> None:
            await arrived.put(message)

        subscription = await self._subscribe(take)
        try:
            while not self._stopping.is_set():
                try:
                    first = await asyncio.wait_for(arrived.get(), timeout=FETCH_WAIT_S)
                except TimeoutError:
                    self._save_position(force=False)  # idle: let the saved position catch up
                    continue
                batch = [first]
                while len(batch) < FETCH_BATCH and not arrived.empty():
                    batch.append(arrived.get_nowait())
                await self.record(batch)
                # Group commit: sync when the stream is drained, or at least every
                # SYNC_EVERY_S under load, so one fsync covers many batches.
                now = asyncio.get_running_loop().time()
                if arrived.empty() or now - self._last_sync >= SYNC_EVERY_S:
                    await self._commit()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _subscribe(self, take: Callable[[Msg], Awaitable[None]]) -> Any:
        return await read_in_order(
            self._js,
            subjects=(CHANNEL_SUBJECT_PREFIX + "*", EVENT_SUBJECT_PREFIX + "*"),
            after_seq=self.position,
            idle_heartbeat=HEARTBEAT_S,  # a lost server is noticed in three heartbeats
            cb=take,
        )

    async def record(self, messages: list[Msg]) -> None:
        """Append a batch in stream order (made durable later, by the group commit)."""
        refusals: list[Event] = []
        appended = self._unsynced
        admitted = await self._vouched.admit_all(
            [(message.data, message.subject) for message in messages]
        )
        for message, found in zip(messages, admitted, strict=True):
            self._append(message, found, appended=appended, refusals=refusals)
        # the ordered consumer hands messages over in stream order: the last is the highest
        self._unsynced_position = max(self._unsynced_position, stream_sequence(messages[-1]))
        for event in refusals:
            envelope = sign_fact(event, self._key)
            self._vouched.add(envelope, event, self._key.name)
            await publish_fact(
                self._js, subject=event_subject(self._key.name), msg_id=event.id, envelope=envelope
            )

    async def _commit(self) -> None:
        """The group commit: fsync, then move the position past what was appended."""
        self._last_sync = asyncio.get_running_loop().time()
        target = self._unsynced_position
        if target <= self.position:
            return
        self._log.flush()
        await self._fsync()
        # Nothing is appended meanwhile (appends happen in this task), but a snapshot
        # may have synced it all already.
        if target <= self.position:
            return
        appended, self._unsynced = self._unsynced, []
        self._synced(target, appended)

    def make_durable(self) -> None:
        """fsync what was appended, then move the position past it (and save it).

        The saved position never runs ahead of the synced log: after a crash the
        recorder reads again from the last saved position and skips what the log
        already holds.
        """
        self._last_sync = asyncio.get_running_loop().time()
        target = self._unsynced_position
        if target > self.position:
            self._log.sync()
            appended, self._unsynced = self._unsynced, []
            self._synced(target, appended)
        self._save_position(force=True)

    def _synced(self, target: int, appended: list[Fact]) -> None:
        self.position = max(self.position, target)
        self._save_position(force=False)
        for fact in appended:
            for observer in self.observers:
                observer(fact)
        if self._since_checkpoint >= self._checkpoint_every:
            self.checkpoint()

    def _save_position(self, *, force: bool) -> None:
        """Write the synced position at most every POSITION_EVERY_S (always if forced).
        A position left behind by a crash only makes the recorder read again messages
        it then recognises as recorded."""
        now = asyncio.get_running_loop().time()
        if self.position == self._saved_position:
            return
        if force or now - self._position_saved_at >= POSITION_EVERY_S:
            write_position(self._position_file, self.position)
            self._saved_position = self.position
            self._position_saved_at = now

    @property
    def size(self) -> int:
        """How many facts the log holds."""
        return self._log.size

    def snapshot(self) -> FactsSnapshot:
        """The facts directory as of now, checkpointed (for committing it)."""
        self.make_durable()
        self._since_checkpoint = 0
        return self._log.snapshot()

    def checkpoint(self) -> None:
        self._log.checkpoint()
        self._since_checkpoint = 0

    def _append(
        self,
        message: Msg,
        found: tuple[Fact, str] | InputError,
        *,
        appended: list[Fact],
        refusals: list[Event],
    ) -> None:
        """Append one message's fact, or note why it cannot be recorded."""
        if isinstance(found, InputError):
            self.counters.refused += 1
            refusals.append(_unverified(message, found, self._key.name))
            return
        fact, _ = found
        digest = envelope_digest(message.data)
        known = self._ids.get(fact.id)
        if known == digest:
            self.counters.repeated += 1
            return
        if known is not None:
            self.counters.refused += 1
            problem = InputError(f"{fact.id!r} is already the id of another fact in the log")
            refusals.append(_unverified(message, problem, self._key.name))
            return
        for reference in references_of(fact):
            if reference not in self._ids:
                self.counters.refused += 1
                problem = InputError(
                    f"{fact.id!r} refers to {reference!r}, which is no earlier fact"
                )
                refusals.append(_unverified(message, problem, self._key.name))
                return
        self._log.append(message.data, fact)
        self._ids[fact.id] = digest
        self.counters.recorded += 1
        self._since_checkpoint += 1
        appended.append(fact)


def _unverified(message: Msg, problem: InputError, host: str) -> Event:
    # The id and the time follow from the refused message (its bytes, and when the
    # stream took it), so reading it again refuses it in the very same envelope.
    digest = hashlib.sha256(message.data).hexdigest()[:32]
    return Event(
        id=f"ev-unverified-{digest}",
        kind=EventKind.REFUSED,
        actor=host,
        time_ms=_stream_time_ms(message),
        reason="unverified",
        detail=str(problem)[:1000],
        data={"subject": message.subject[:200], "stream_seq": str(stream_sequence(message))},
    )


def _stream_time_ms(message: Msg) -> int:
    """When JetStream stored the message, in ms since the epoch."""
    return int(message.metadata.timestamp.timestamp() * 1000)


class Fsync:
    """An fsync run where it costs least.

    A disk whose last :data:`FSYNC_HISTORY` fsyncs each answered within
    :data:`INLINE_FSYNC_S` is waited for right here: the hop to a worker thread and back
    costs more than that (about 1.6 ms of latency on a loaded 2-core machine, against
    0.2 ms for the fsync itself). Once one is slower, the next ones run in a worker
    thread, so the host's agents go on while the disk works, until the disk has been
    fast that many times in a row. The price: the first slow fsync after a fast run
    holds the event loop for as long as it takes.
    """

    def __init__(self, fsync: Callable[[], None]) -> None:
        self._fsync = fsync
        self._streak = QuickStreak(
            needed=FSYNC_HISTORY, limit_s=INLINE_FSYNC_S, quick_at_start=True
        )

    @property
    def inline(self) -> bool:
        return self._streak.quick

    async def __call__(self) -> None:
        if self.inline:
            took_s = self._timed()
        else:
            took_s = await asyncio.to_thread(self._timed)
        self._streak.observe(took_s)

    def _timed(self) -> float:
        started = time.perf_counter()
        self._fsync()
        return time.perf_counter() - started


def read_position(path: Path) -> int:
    """The stream sequence of the last message recorded into this facts directory."""
    try:
        return int(path.read_text(encoding="utf-8").strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise ConfigError(f"{path} is damaged ({exc}); delete it to record from the start") from exc


def write_position(path: Path, position: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{position}\n", encoding="utf-8")
    temporary.replace(path)
