"""An agent's record saved and loaded, in the ``agora-agents`` bucket.

Saving is compare-and-set on the bucket's revision: a second host running the same
agent cannot silently overwrite the first's progress; it gets :class:`RecordConflict`,
reloads, and redoes its batch on the fresh record.

Each saved record is signed with the agent's key (which every host running the agent
holds), so what is read back is what a host wrote: a record whose signature does not
verify, or that has none, is refused (whoever can write the bucket could otherwise
plant hop budgets, processed ids, state or old acts of the agent in it). One limit: a
record the agent's key once signed can be put back in place of a newer one by whoever
can write the bucket; the NATS server's permissions are what keeps that out.

An outbox too large for one message to the server goes in up to
:data:`MAX_OUTBOX_PARTS` parts, put before the record under keys named after their
digest; the record names each part by its SHA-256 digest, under the signature. A part
no saved record names any more is purged from the bucket's stream in the background
(so no delete marker stays behind for each), and one that a crash left is swept when
the agent starts again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from agora.core import ed25519
from agora.core.errors import MalformedEnvelope
from agora.core.keys import SigningKey
from agora.core.signing import pae
from agora.core.spine import AGENTS_BUCKET
from agora.host.agent_record import (
    RECORD_TYPE,
    AgentRecord,
    OutboxPart,
    Outgoing,
    RecordConflict,
    RecordTooLarge,
    UntrustedRecord,
    decode_part,
    encode_parts,
    outbox_bytes,
    part_key,
    signed_part,
)

log = logging.getLogger(__name__)

MAX_OUTBOX_PARTS: Final = 8  # of the server's message size each: some 8 MB of outputs
LOAD_ATTEMPTS: Final = 10  # reads of a record whose parts another host keeps replacing
LOAD_PAUSE_S: Final = 0.01  # after the first such read; longer after each
SWEEP_AFTER_S: Final = 600.0  # a part put longer ago than this is no save under way
CLOSE_WAIT_S: Final = 2.0
_KV_STREAM: Final = f"KV_{AGENTS_BUCKET}"
_KV_PREFIX: Final = f"$KV.{AGENTS_BUCKET}."  # a key's subject, less the key


class RecordStore:
    """Load and compare-and-set save one agent's record, of at most ``max_bytes``,
    signed with the agent's ``key``: the record's JSON, a newline, and the signature
    (base64) over :func:`signed_part` of the JSON. An outbox that does not fit goes in
    up to :data:`MAX_OUTBOX_PARTS` parts under keys named after their digest, put
    before the record (the record's signature covers each part's digest). A part left
    behind (a crash between a save and the purge of what it replaced, a failed save) is
    purged by :meth:`sweep` once it is old enough to be no save under way."""

    def __init__(
        self, js: JetStreamContext, kv: KeyValue, agent: str, *, max_bytes: int, key: SigningKey
    ) -> None:
        self._js = js
        self._kv = kv
        self._key = agent
        self._signer = key
        self._revision = 0
        self._parts: frozenset[str] = frozenset()  # the keys the saved record names
        self._purging: set[asyncio.Task[None]] = set()
        self.max_bytes = max_bytes

    async def load(self) -> AgentRecord:
        """The saved record (a fresh one if none is). A part of its outbox gone means
        another host saved since and purged it, if the record changed meanwhile; if the
        very same record is read again with its part still gone, something other than a
        host deleted it, and the record is untrusted."""
        gone_from: int | None = None  # the revision last read with a part gone
        for attempt in range(LOAD_ATTEMPTS):
            try:
                entry = await self._kv.get(self._key)
            except KeyNotFoundError:
                self._revision = 0
                self._parts = frozenset()
                return AgentRecord()
            revision = entry.revision or 0
            try:
                record, parts = self._read(entry.value or b"")
                outbox = await self._read_parts(parts)
            except _PartGone as gone:
                if revision == gone_from:
                    raise UntrustedRecord(
                        f"agent {self._key!r}: its saved outbox part {gone.key!r} is gone: "
                        "something other than a host deleted it; delete the key "
                        f"{self._key!r} in the agents bucket to start the agent afresh"
                    ) from None
                gone_from = revision
                await asyncio.sleep(LOAD_PAUSE_S * (attempt + 1))
                continue
            except MalformedEnvelope as exc:
                raise type(exc)(f"agent {self._key!r}: {exc}") from exc  # untrusted stays so
            self._revision = revision  # only a record a host wrote is saved over
            self._parts = frozenset(p.key for p in parts)
            return replace(record, outbox=record.outbox + outbox)
        raise RecordConflict(
            f"agent {self._key!r}: its record changed under each of {LOAD_ATTEMPTS} reads: "
            "run each agent on one host at a time"
        )

    def _read(self, stored: bytes) -> tuple[AgentRecord, tuple[OutboxPart, ...]]:
        body, newline, signature = stored.rpartition(b"\n")
        if not newline:
            raise UntrustedRecord(
                "its saved record is unsigned: it was saved before records were signed, "
                "or by something other than a host (which could plant hop budgets, ids "
                f"and state in it); delete the key {self._key!r} in the agents bucket to "
                "start the agent afresh"
            )
        try:
            signed = base64.b64decode(signature, validate=True)
        except binascii.Error:
            signed = b""
        public_key = self._signer.public_key
        if not (
            ed25519.verifies(public_key, signed, signed_part(body))
            or ed25519.verifies(public_key, signed, pae(RECORD_TYPE, body))  # saved before
        ):
            raise UntrustedRecord(
                "its saved record is not signed by its key: something other than a host "
                f"wrote it; delete the key {self._key!r} in the agents bucket to start the "
                "agent afresh"
            )
        return AgentRecord.decode_with_parts(body)

    async def _read_parts(self, parts: tuple[OutboxPart, ...]) -> tuple[Outgoing, ...]:
        outbox: list[Outgoing] = []
        for part in parts:
            if part.key != part_key(self._key, part.digest):  # only a host signs records
                raise UntrustedRecord(f"its record names a part under a wrong key: {part.key!r}")
            try:
                entry = await self._kv.get(part.key)
            except KeyNotFoundError:
                raise _PartGone(part.key) from None
            data = entry.value or b""
            if hashlib.sha256(data).hexdigest() != part.digest:
                raise UntrustedRecord(
                    f"its saved outbox part {part.key!r} is not the one its record names: "
                    f"something other than a host wrote it; delete the key {self._key!r} in "
                    "the agents bucket to start the agent afresh"
                )
            outbox += decode_part(data)
        return tuple(outbox)

    async def save(self, record: AgentRecord) -> None:
        """Raises :class:`RecordConflict`, or :class:`RecordTooLarge` before sending."""
        data = self._signed(record.encode())
        placed: list[tuple[OutboxPart, bytes]] = []
        if len(data) > self.max_bytes and record.outbox:
            placed = self._placed(record.outbox)
            data = self._signed(replace(record, outbox=()).encode(p for p, _ in placed))
        if len(data) > self.max_bytes:
            raise RecordTooLarge(self._key, len(data), self.max_bytes)
        named = frozenset(part.key for part, _ in placed)
        for part, value in placed:
            if part.key not in self._parts:  # named by its digest: one already there is it
                await self._kv.put(part.key, value)
        try:
            if self._revision == 0:
                self._revision = await self._kv.create(self._key, data)
            else:
                self._revision = await self._kv.update(self._key, data, last=self._revision)
        except KeyWrongLastSequenceError as exc:
            self._forget(named - self._parts)  # named by no record
            raise RecordConflict(
                f"agent {self._key!r} was saved by another host since this one read it: "
                "run each agent on one host at a time"
            ) from exc
        unnamed, self._parts = self._parts - named, named
        self._forget(unnamed)

    async def sweep(self, *, older_than_s: float = SWEEP_AFTER_S) -> int:
        """Purge the parts of this agent's outboxes that the saved record does not name
        and that were put more than ``older_than_s`` ago: left behind by a crash, a
        failed save or purge. A younger one may be another host's save under way.
        Returns how many were purged. Requests and answers only (no watcher, which a
        purge under way could keep waiting for good)."""
        try:
            revision = (await self._kv.get(self._key)).revision or 0
        except KeyNotFoundError:  # deleted, to start afresh: its parts are named by nothing
            revision = 0
        if revision != self._revision:
            return 0  # saved by another host since this one read it: not ours to judge
        unnamed = [key for key in await self.part_keys() if key not in self._parts]
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_s)
        swept = 0
        for key in unnamed:
            try:
                put = await self._js.get_msg(_KV_STREAM, subject=_KV_PREFIX + key)
            except NotFoundError:
                continue  # purged meanwhile
            if put.time is not None and put.time < cutoff:
                await self._purge(key)
                swept += 1
        return swept

    async def part_keys(self) -> list[str]:
        """The keys of every outbox part of this agent's in the bucket, named or not
        (asked of the stream)."""
        found = await self._js.stream_info(
            _KV_STREAM, subjects_filter=f"{_KV_PREFIX}{self._key}.outbox.>"
        )
        return sorted(subject[len(_KV_PREFIX) :] for subject in found.state.subjects or {})

    async def close(self) -> None:
        """Wait for the purges under way (a part a stop leaves is swept at a later start)."""
        if self._purging:
            await asyncio.wait(set(self._purging), timeout=CLOSE_WAIT_S)

    def _signed(self, body: bytes) -> bytes:
        return body + b"\n" + base64.b64encode(self._signer.sign(signed_part(body)))

    def _placed(self, outbox: tuple[Outgoing, ...]) -> list[tuple[OutboxPart, bytes]]:
        """The outbox in parts, each with where it is saved and its digest."""
        try:
            parts = encode_parts(outbox, self.max_bytes)
        except ValueError:
            parts = []
        if not parts or len(parts) > MAX_OUTBOX_PARTS:
            size = outbox_bytes(outbox)
            raise RecordTooLarge(self._key, size, self.max_bytes * MAX_OUTBOX_PARTS)
        placed = []
        for value in parts:
            digest = hashlib.sha256(value).hexdigest()
            placed.append((OutboxPart(part_key(self._key, digest), digest), value))
        return placed

    def _forget(self, keys: Iterable[str]) -> None:
        """Purge parts no saved record names, in the background: the outputs go out
        meanwhile (a host that read the record before may still look for them: it then
        reads the record again)."""
        for key in keys:
            purge = asyncio.create_task(self._purge(key))
            self._purging.add(purge)
            purge.add_done_callback(self._purging.discard)

    async def _purge(self, key: str) -> None:
        """Purged from the bucket's stream, so that no delete marker is left behind for
        each part ever saved; unless a later save named it again (the same bytes)."""
        if key in self._parts:
            return
        try:
            await self._js.purge_stream(_KV_STREAM, subject=_KV_PREFIX + key)
        except (NatsError, TimeoutError) as exc:  # swept at a later start
            log.warning("agent %s: outbox part %s not purged: %s", self._key, key, exc)


class _PartGone(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key
