"""The recorder: the one writer that turns the stream into the fact log.

It reads the whole stream (every channel and every event subject) strictly in stream
order, through an ordered consumer starting after the last message it recorded (kept
in ``FACTS/.position``, beside the log it describes). It checks each envelope with the
same rules ``agora verify`` applies (:func:`agora.core.admission.admit`, and a reply or
event must point at an earlier fact) and appends it: each batch is written to the log
file as it is recorded (``observers`` hear of its facts then). A task of its own makes
what was written durable: one fsync, in a worker thread so the event loop never waits
on the disk, covers everything written since the last (a group commit, at most every
:data:`SYNC_EVERY_S`), and only then does the position move (``durable_observers``
hear of the facts then); it is saved at most once a second. The stream, not the log,
is what the recorder answers to: a crash between a write and its fsync reads those
messages again, and facts already in the log are recognised by id and skipped, so
each fact is recorded exactly once and in order. An envelope that fails a rule is not
recorded; a signed ``refused`` event naming it is published instead, so the refusal
itself is a fact.

Envelopes the host in the same process already signed or verified are not verified a
second time (:class:`~agora.host.vouched.Vouched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError

from agora.core.envelope import Event, EventKind, Fact, references_of
from agora.core.errors import ConfigError, InputError, InternalError
from agora.core.factlog import (
    POSITION_FILE,
    FactLog,
    FactsSnapshot,
    envelope_digest,
    fsync_directory,
)
from agora.core.keys import SigningKey
from agora.core.ordered import OrderedFeed
from agora.core.received import JetStreamMessage
from agora.core.signing import sign_fact
from agora.core.spine import (
    CHANNEL_SUBJECT_PREFIX,
    EVENT_SUBJECT_PREFIX,
    STREAM,
    event_subject,
    publish_fact,
    stream_place,
    stream_sequence,
)
from agora.host.tasks import finish
from agora.host.vouched import Vouched

log = logging.getLogger(__name__)
T = TypeVar("T")

FETCH_BATCH: Final = 512
FETCH_WAIT_S: Final = 0.25
SYNC_EVERY_S: Final = 0.002  # the shortest time between two group commits
POSITION_EVERY_S: Final = 1.0
HEARTBEAT_S: Final = 1.0
MAX_DIGITS: Final = 20  # in a number of the position file


@dataclass(slots=True)
class RecorderCounters:
    recorded: int = 0
    repeated: int = 0
    refused: int = 0
    reread: int = 0  # ordered consumers made again, after a gap, a stall or silence


class Recorder:
    """Reads the stream in order from the position after the last recorded message."""

    def __init__(
        self,
        *,
        client: Client,
        factlog: FactLog,
        host_key: SigningKey,
        vouched: Vouched,
        checkpoint_every: int,
    ) -> None:
        self._client = client
        self._js = client.jetstream()
        self._log = factlog
        self._key = host_key
        self._vouched = vouched
        self._checkpoint_every = checkpoint_every
        self._ids = factlog.fact_ids()
        self._position_file = factlog.directory / POSITION_FILE
        saved = read_position(self._position_file)
        self.position = saved.seq
        self._stream_created_us = saved.stream_created_us  # which stream it is a place in
        self._durable_entries = factlog.size  # the log's entries the position covers
        self._written_entries = factlog.size  # the log's entries written so far
        if factlog.cut_entries or factlog.size < saved.entries:
            log.warning(
                "recorder: the fact log holds %d entries (%d unreadable ones cut from its "
                "end), but its position was saved over %d: recording again from the start "
                "of the stream (what the log holds is recognised and skipped)",
                factlog.size,
                factlog.cut_entries,
                saved.entries,
            )
            self.position = 0
        self._saved_position = self.position
        self._position_saved_at = 0.0
        # the position last written (by the loop, or a worker thread): never a lower one
        # after it, whichever of two writes gets there first
        self._position_lock = threading.Lock()
        self._position_written = self.position
        self._unsynced_position = self.position  # appended, maybe not yet written
        self._written_position = self.position  # written to the log file, not yet synced
        self._unsynced: list[Fact] = []  # appended since the last write
        self._unsynced_written: list[Fact] = []  # written since the last sync
        self._syncing_facts: list[Fact] = []  # written, and being synced now
        self.failure: str | None = None  # why the recorder stopped for good, if it did
        self._written = asyncio.Event()
        self._since_checkpoint = 0
        self.counters = RecorderCounters()
        self.observers: list[Callable[[Fact], None]] = []
        self.durable_observers: list[Callable[[Fact], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._syncing: asyncio.Task[None] | None = None
        self._fsyncing: asyncio.Future[None] | None = None  # the fsync in a worker thread
        self._position_writing: asyncio.Future[None] | None = None  # likewise, the position
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Start recording, after checking that the saved position is a place in the
        stream on this server (raises :class:`ConfigError` if it is not)."""
        info = await self._js.stream_info(STREAM)
        created_us = _created_us(info.created)
        self._check_stream(created_us, info.state.last_seq or 0)
        self._stream_created_us = created_us
        self._task = asyncio.create_task(self._run(), name="agora-recorder")
        self._syncing = asyncio.create_task(self._sync_forever(), name="agora-recorder-sync")

    def _check_stream(self, created_us: int, last_seq: int) -> None:
        """Refuse a position saved while recording another stream: the server's store was
        reset (or the facts directory is another agora's), and reading on from it would
        skip the new stream's messages up to there, or wait for good for a sequence it
        may never reach, recording nothing and saying nothing."""
        saved = self._stream_created_us
        if self.position == 0 or (saved == created_us if saved else self.position <= last_seq):
            return
        was = f"a stream created at {_time_us(saved)}" if saved else "a longer stream"
        raise ConfigError(
            f"{self._position_file} was saved while recording {was} (up to its message "
            f"{self.position}), not the {STREAM} stream on this NATS server (created at "
            f"{_time_us(created_us)}, {last_seq} messages): the server's store was reset, "
            "or this facts directory belongs to another agora. To record this stream into "
            f"this log, delete {self._position_file} (the facts the log holds are "
            "recognised and skipped); else name the right facts directory"
        )

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop after the batch in hand (graceful), or at once, as a crash would. The
        group commit stops, what was appended is made durable (graceful) and the log is
        checkpointed and let go, whatever the reading task ended with (raised after):
        everything appended is a checked fact, in stream order."""
        async with contextlib.AsyncExitStack() as then:  # its steps run last to first
            then.callback(self._close_log)
            then.push_async_callback(self._stop_syncing, graceful=graceful)
            await finish(self._task, self._stopping, graceful=graceful)

    async def _stop_syncing(self, *, graceful: bool) -> None:
        self._stopping.set()
        self._written.set()  # to wake the group commit, which then ends
        with contextlib.suppress(Exception):  # an fsync's failure is reported already
            await finish(self._syncing, self._stopping, graceful=graceful)
        for writing in (self._fsyncing, self._position_writing):
            if writing is not None:  # a crash's cancel does not stop a thread: wait
                await asyncio.wait({writing})
        if graceful:
            with contextlib.suppress(OSError):  # stops the recorder, and is said so
                self.make_durable()

    def _close_log(self) -> None:
        if self.failure is None:
            try:
                self._log.close()  # checkpoints what was recorded
            except OSError as exc:
                self._fail(f"the fact log could not be checkpointed: {exc}")
        else:
            with contextlib.suppress(OSError):  # a flush at close can fail again
                self._log.release()  # no checkpoint over what may not be on the disk

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.failure is not None:
                    return  # the log could not be written: said, and stopped
                again = self.position + 1
                if isinstance(exc, NatsError | TimeoutError):  # the server away: one line
                    log.warning("recorder: %s; reading again from stream sequence %d", exc, again)
                else:
                    log.exception("recorder: reading again from stream sequence %d", again)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        """Record from ``position + 1`` on, through an ordered consumer (no gaps, in order)."""
        feed = OrderedFeed(
            self._client,
            stream=STREAM,
            subjects=(CHANNEL_SUBJECT_PREFIX + "*", EVENT_SUBJECT_PREFIX + "*"),
            after_seq=self.position,
            heartbeat_s=HEARTBEAT_S,  # a lost server is noticed in two heartbeats
        )
        await feed.start()
        reread = self.counters.reread
        try:
            while not self._stopping.is_set():
                batch = await feed.take(FETCH_BATCH, FETCH_WAIT_S)
                self.counters.reread = reread + feed.restarts
                if not batch:
                    await self._save_position_soon()  # idle: let the saved position catch up
                    continue
                await self.record(batch)
                self._write()
        finally:
            with contextlib.suppress(Exception):
                await feed.stop()

    async def record(self, messages: Sequence[JetStreamMessage]) -> None:
        """Append a batch in stream order (made durable later, by the group commit).

        The batch's first messages that this process already signed or verified (its
        agents' replies, above all) are appended and written at once: they do not wait
        for the signatures of the messages after them to be checked. Unless one of them
        is refused: the position (from which a restart reads again) passes a refused
        message only once its refusal is published, or a crash, or a failed publish,
        would lose the refusal for good."""
        refusals: list[Event] = []
        arrivals = [(message.data, message.subject) for message in messages]
        ready = self._vouched.admit_known(arrivals)
        if ready:
            self._append_all(messages[: len(ready)], ready, refusals)
            if not refusals:
                self._reached(messages[len(ready) - 1])
                self._write()
        if len(ready) < len(messages):
            admitted = await self._vouched.admit_all(arrivals[len(ready) :])
            self._append_all(messages[len(ready) :], admitted, refusals)
        for event in refusals:
            envelope = sign_fact(event, self._key)
            self._vouched.add(envelope, event, self._key.name)
            await publish_fact(
                self._js, subject=event_subject(self._key.name), msg_id=event.id, envelope=envelope
            )
        self._reached(messages[-1])

    def _append_all(
        self,
        messages: Sequence[JetStreamMessage],
        admitted: list[tuple[Fact, str] | InputError],
        refusals: list[Event],
    ) -> None:
        for message, found in zip(messages, admitted, strict=True):
            self._append(message, found, appended=self._unsynced, refusals=refusals)

    def _reached(self, message: JetStreamMessage) -> None:
        """Everything up to ``message`` is appended or refused (and the refusal published):
        a write may move the position past it. The ordered consumer hands messages over
        in stream order."""
        self._unsynced_position = max(self._unsynced_position, stream_sequence(message))

    def _write(self) -> None:
        """Hand what was appended to the operating system: it is in the log file now
        (a crashed process loses none of it), durable at the next group commit."""
        if self._unsynced_position <= self._written_position:
            return
        self._on_disk(self._log.flush)
        self._written_position = self._unsynced_position
        self._written_entries = self._log.size
        written, self._unsynced = self._unsynced, []
        self._unsynced_written.extend(written)
        for fact in written:
            for observer in self.observers:
                observer(fact)
        self._written.set()

    async def _sync_forever(self) -> None:
        """The group commit: whenever something was written, fsync it (in a worker
        thread), then move the position past it; at most every :data:`SYNC_EVERY_S`,
        so one fsync covers everything written meanwhile.

        An fsync that fails stops the recorder for good: the system may have dropped
        what it could not write and would report the next fsync a success, so nothing
        written since the last good one can be called durable. The position stays
        where the log was last durable, and a restart reads again from there."""
        while True:
            await self._written.wait()
            self._written.clear()
            if self._stopping.is_set():
                return  # the stop makes the rest durable
            try:
                await self._commit()
            except OSError as exc:
                self._fail(f"the fact log could not be made durable: {exc}")
                return
            except Exception:  # an observer: the commit itself is done
                log.exception("recorder: after a group commit")
            await asyncio.sleep(SYNC_EVERY_S)

    def _fail(self, reason: str) -> None:
        if self.failure is not None:
            return  # said once
        self.failure = reason
        log.critical(
            "recorder stopped: %s; facts are recorded again from stream sequence %d once "
            "agora is restarted on a healthy disk",
            reason,
            self.position + 1,
        )
        self._stopping.set()  # the reading stops too: nothing more goes into the log

    async def _commit(self) -> None:
        """fsync what was written, then move the position past it."""
        target, entries = self._written_position, self._written_entries
        if target <= self.position:
            return
        self._syncing_facts, self._unsynced_written = self._unsynced_written, []
        self._fsyncing = asyncio.get_running_loop().run_in_executor(None, self._log.fsync)
        await asyncio.shield(self._fsyncing)
        self._fsyncing = None
        durable, self._syncing_facts = self._syncing_facts, []
        self._synced(target, durable, entries)
        await self._save_position_soon()

    def make_durable(self) -> None:
        """Write and fsync what was appended, then move the position past it (and save
        it). The saved position never runs ahead of the synced log: after a crash the
        recorder reads again from the last saved position and skips what the log
        already holds."""
        if self.failure is not None:
            return  # nothing since the failed fsync can be called durable
        self._write()
        target = self._written_position
        if target > self.position:
            self._on_disk(self._log.sync)
            # what an fsync in flight covers comes first, so each is heard of in order
            durable = self._syncing_facts + self._unsynced_written
            self._syncing_facts, self._unsynced_written = [], []
            self._synced(target, durable, self._written_entries)
        self._save_position(force=True)

    def _on_disk(self, sync: Callable[[], T]) -> T:
        """Run something that writes or syncs the log. A failure (a full disk, a failed
        fsync) stops the recorder (:meth:`_fail`), whichever path met it first, and is
        raised on: a write that failed halfway must not be followed by more lines, nor
        an fsync that failed by a position past what it covered."""
        try:
            return sync()
        except OSError as exc:
            self._fail(f"the fact log could not be written or made durable: {exc}")
            raise

    def _synced(self, target: int, durable: list[Fact], entries: int) -> None:
        for fact in durable:
            for observer in self.durable_observers:
                observer(fact)
        if target <= self.position:  # a snapshot synced it all meanwhile
            return
        self.position = target
        self._durable_entries = entries
        if self._since_checkpoint >= self._checkpoint_every:
            self.checkpoint()

    def _save_position(self, *, force: bool) -> None:
        """Write the synced position, if it is due (see :meth:`_position_due`), here (at
        a stop or a snapshot, which sync the log here too)."""
        due = self._position_due(force=force)
        if due is not None:
            try:
                self._write_position(due)
            except OSError as exc:
                self._position_not_saved(exc)

    async def _save_position_soon(self) -> None:
        """Write the synced position, if it is due, in a worker thread: it is fsynced,
        and the event loop does not wait on the disk. A stop waits for the thread."""
        due = self._position_due(force=False)
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._position_writing = loop.run_in_executor(None, self._write_position, due)
        try:
            await asyncio.shield(self._position_writing)
        except OSError as exc:
            self._position_not_saved(exc)

    def _position_not_saved(self, exc: OSError) -> None:
        """A position not saved costs only a re-read after a restart: the recorder goes
        on, and tries again at the next chance."""
        self._saved_position = -1
        log.warning(
            "recorder: its position could not be saved (%s); a restart would read again "
            "from the last one saved",
            exc,
        )

    def _position_due(self, *, force: bool) -> Position | None:
        """The synced position, to write at most every POSITION_EVERY_S (always if
        forced). A position left behind by a crash only makes the recorder read again
        messages it then recognises as recorded."""
        now = asyncio.get_running_loop().time()
        if self.position == self._saved_position:
            return None
        if not force and now - self._position_saved_at < POSITION_EVERY_S:
            return None
        self._saved_position = self.position
        self._position_saved_at = now
        return Position(self.position, self._durable_entries, self._stream_created_us)

    def _write_position(self, position: Position) -> None:
        with self._position_lock:
            if position.seq <= self._position_written:
                return  # a later position was written meanwhile
            write_position(self._position_file, position)
            self._position_written = position.seq

    @property
    def size(self) -> int:
        """How many facts the log holds."""
        return self._log.size

    def snapshot(self) -> FactsSnapshot:
        """The facts directory as of now, checkpointed (for committing it)."""
        if self.failure is not None:
            raise InternalError(f"the recorder stopped ({self.failure}): nothing to commit")
        self.make_durable()
        self._since_checkpoint = 0
        return self._on_disk(self._log.snapshot)

    def checkpoint(self) -> None:
        self._on_disk(self._log.checkpoint)
        self._since_checkpoint = 0

    def _append(
        self,
        message: JetStreamMessage,
        found: tuple[Fact, str] | InputError,
        *,
        appended: list[Fact],
        refusals: list[Event],
    ) -> None:
        """Append one message's fact, or note why it cannot be recorded."""
        if isinstance(found, InputError):
            self.counters.refused += 1
            refusals.append(_unverified(message, found, self._key))
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
            refusals.append(_unverified(message, problem, self._key))
            return
        for reference in references_of(fact):
            if reference not in self._ids:
                self.counters.refused += 1
                problem = InputError(
                    f"{fact.id!r} refers to {reference!r}, which is no earlier fact"
                )
                refusals.append(_unverified(message, problem, self._key))
                return
        self._on_disk(lambda: self._log.append(message.data, fact))
        self._ids[fact.id] = digest
        self.counters.recorded += 1
        self._since_checkpoint += 1
        appended.append(fact)


def _unverified(message: JetStreamMessage, problem: InputError, key: SigningKey) -> Event:
    # The id and the time follow from the refused message (its bytes, its place in the
    # stream and when the stream took it), so reading it again refuses it in the very
    # same envelope, and the same bytes published twice are refused twice; the id
    # through the host's key, so whoever published the message cannot take it first.
    place = b"%d:" % stream_sequence(message)
    digest = key.keyed_digest(place + message.data)[:32]
    return Event(
        id=f"ev-unverified-{digest}",
        kind=EventKind.REFUSED,
        actor=key.name,
        time_ms=_stream_time_ms(message),
        reason="unverified",
        detail=str(problem)[:1000],
        data={"subject": message.subject[:200], "stream_seq": str(stream_sequence(message))},
    )


def _stream_time_ms(message: JetStreamMessage) -> int:
    """When JetStream stored the message, in ms since the epoch."""
    return stream_place(message)[1]


@dataclass(frozen=True, slots=True)
class Position:
    """Where the recorder is: the stream sequence of the last message recorded into the
    facts directory, how many entries its log held, synced, then, and when the stream
    was created, in microseconds since 1970 (0: not said, as an older recorder wrote
    it). A log found shorter than that was cut or rolled back; a stream created at
    another time is another stream."""

    seq: int
    entries: int = 0
    stream_created_us: int = 0


def read_position(path: Path) -> Position:
    """The position saved in a facts directory (nothing recorded yet if there is none)."""
    try:
        fields = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return Position(0)
    numbers = [int(f) for f in fields if f.isascii() and f.isdigit() and len(f) <= MAX_DIGITS]
    if len(numbers) != len(fields) or len(numbers) > 3:
        raise ConfigError(
            f"{path} is damaged: expected '<stream sequence> <entries> <stream created>', "
            f"found {fields[:4]!r}; delete it to record from the start"
        )
    return Position(*numbers) if numbers else Position(0)


def write_position(path: Path, position: Position) -> None:
    """Replace the saved position, durably: a machine that crashes at any point leaves
    the old position or the new one, never an empty or half-written file (which would
    be refused as damaged at the next start)."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(f"{position.seq} {position.entries} {position.stream_created_us}\n")
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    fsync_directory(path.parent)


def _created_us(created: datetime | None) -> int:
    """A stream's creation time in microseconds since 1970 (0 if the server says none)."""
    if created is None:
        return 0
    return (created - datetime.fromtimestamp(0, UTC)) // timedelta(microseconds=1)


def _time_us(micros: int) -> str:
    return (datetime.fromtimestamp(0, UTC) + timedelta(microseconds=micros)).isoformat()
