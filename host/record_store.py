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
:data:`MAX_OUTBOX_PARTS` parts, put before the record, each under a key of its own
drawn at random; the record names each part by its key and its SHA-256 digest, under
the signature. A part already saved is named again rather than put again. A part no
saved record names any more is purged from the bucket's stream in the background (so
no delete marker stays behind for each), and one that a crash left is swept when the
agent starts again.

Why keys drawn at random, not named after the content: two hosts may put the very
same bytes (an outbox both issue again after a crash), and a purge of one host's part
would then take away the part the other's record names. A random key is named by the
record of the save that put it, or by none: the host whose save made a record naming
it no longer is the only one that ever purges it, and only after that save; a save
that lost to another host's purges only the keys it put itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from agora.core import ed25519
from agora.core.errors import MalformedEnvelope
from agora.core.keys import RetiredKey, SigningKey
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
    is_part_of,
    outbox_bytes,
    part_key,
    signed_part,
)

log = logging.getLogger(__name__)

MAX_OUTBOX_PARTS: Final = 8  # of the server's message size each: some 8 MB of outputs
LOAD_ATTEMPTS: Final = 10  # reads of a record whose parts another host keeps replacing
LOAD_PAUSE_S: Final = 0.01  # after the first such read; longer after each
CLOSE_WAIT_S: Final = 2.0
_KV_STREAM: Final = f"KV_{AGENTS_BUCKET}"
_KV_PREFIX: Final = f"$KV.{AGENTS_BUCKET}."  # a key's subject, less the key


class RecordStore:
    """Load and compare-and-set save one agent's record, of at most ``max_bytes``,
    signed with the agent's ``key``: the record's JSON, a newline, and the signature
    (base64) over :func:`signed_part` of the JSON. An outbox that does not fit goes in
    up to :data:`MAX_OUTBOX_PARTS` parts, put before the record (the record's signature
    covers each part's key and digest). A part left behind (a crash between a save and
    the purge of what it replaced, a failed save) is purged by :meth:`sweep`."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        agent: str,
        *,
        max_bytes: int,
        key: SigningKey,
        retired_keys: tuple[RetiredKey, ...] = (),
    ) -> None:
        self._js = js
        self._kv = kv
        self._key = agent
        self._signer = key
        # a record saved before the agent's key was replaced is read under its old key
        # (and saved under the new one at the next batch)
        self._retired = retired_keys
        self._revision = 0
        self._parts: dict[str, str] = {}  # the saved record's parts: digest -> key
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
                self._parts = {}
                return AgentRecord()
            revision = entry.revision or 0
            try:
                record, parts, retired = self._read(entry.value or b"")
                if retired is not None:
                    await self._check_stored_before(retired, revision)
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
            except UntrustedRecord as exc:
                raise UntrustedRecord(f"agent {self._key!r}: {exc}") from exc
            except MalformedEnvelope as exc:  # signed by its key, but no record this host reads
                raise UntrustedRecord(
                    f"agent {self._key!r}: its saved record cannot be read ({exc}); delete "
                    f"the key {self._key!r} in the agents bucket to start the agent afresh"
                ) from exc
            self._revision = revision  # only a record a host wrote is saved over
            self._parts = {p.digest: p.key for p in parts}
            return replace(record, outbox=record.outbox + outbox)
        raise RecordConflict(
            f"agent {self._key!r}: its record changed under each of {LOAD_ATTEMPTS} reads "
            "(other hosts running it saved it faster than it could be read)"
        )

    async def _check_stored_before(self, retired: RetiredKey, revision: int) -> None:
        """A record signed with a key since retired is one saved before it was retired,
        by the server's clock: whoever still had the old key could write one since."""
        stored = await self._js.get_msg(_KV_STREAM, seq=revision)
        stored_ms = int(stored.time.timestamp() * 1000) if stored.time else None
        if stored_ms is None or stored_ms > retired.retired_at_ms:
            raise UntrustedRecord(
                f"its saved record is signed with the key {retired.keyid[:16]}, retired "
                "before the record was stored: something other than a host wrote it; "
                f"delete the key {self._key!r} in the agents bucket to start the agent "
                "afresh"
            )

    def _read(self, stored: bytes) -> tuple[AgentRecord, tuple[OutboxPart, ...], RetiredKey | None]:
        """The record, where the rest of its outbox is, and the retired key it is signed
        with (None: the key in use)."""
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

        def signed_by(public_key: bytes) -> bool:
            return ed25519.verifies(public_key, signed, signed_part(body)) or ed25519.verifies(
                public_key,
                signed,
                pae(RECORD_TYPE, body),  # as saved before
            )

        if signed_by(self._signer.public_key):
            record, parts = AgentRecord.decode_with_parts(body)
            return record, parts, None
        retired = next((r for r in self._retired if signed_by(r.public_key)), None)
        if retired is None:
            raise UntrustedRecord(
                "its saved record is not signed by its key: something other than a host "
                f"wrote it; delete the key {self._key!r} in the agents bucket to start the "
                "agent afresh"
            )
        record, parts = AgentRecord.decode_with_parts(body)
        return record, parts, retired

    async def _read_parts(self, parts: tuple[OutboxPart, ...]) -> tuple[Outgoing, ...]:
        outbox: list[Outgoing] = []
        for part in parts:
            if not is_part_of(self._key, part.key):  # only a host signs records
                raise UntrustedRecord(
                    f"its record names an outbox part under another agent's key: {part.key!r} "
                    f"(its own are {self._key}.outbox.*); delete the key {self._key!r} in the "
                    "agents bucket to start the agent afresh"
                )
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
        put: list[str] = []
        for part, value in placed:
            if part.key not in self._named and part.key not in put:  # else there already
                await self._kv.put(part.key, value)
                put.append(part.key)
        try:
            if self._revision == 0:
                self._revision = await self._kv.create(self._key, data)
            else:
                self._revision = await self._kv.update(self._key, data, last=self._revision)
        except KeyWrongLastSequenceError as exc:
            self._forget(put)  # its keys drawn for this save: no record names them
            raise RecordConflict(
                f"agent {self._key!r}: its record changed since this host read it (another "
                "host running it saved it): the batch is done again on the newer record"
            ) from exc
        unnamed = self._named
        self._parts = {part.digest: part.key for part, _ in placed}
        self._forget(unnamed - self._named)

    @property
    def _named(self) -> frozenset[str]:
        """The keys of the saved record's parts (one a digest: a host names the same
        bytes twice under one key)."""
        return frozenset(self._parts.values())

    async def saved_elsewhere(self) -> bool:
        """Whether the record was saved since this store last read or saved it: by
        another host running the same agent (a deleted record is not: nothing to read)."""
        try:
            revision = (await self._kv.get(self._key)).revision or 0
        except KeyNotFoundError:
            return False
        return revision != self._revision

    async def sweep(self) -> int:
        """Purge the parts of this agent's outboxes that the saved record does not name
        and that the bucket took before it: left behind by a crash, a failed save or
        purge. A part taken after the record may be another host's save under way (it
        puts its parts, then the record): it is left for a later sweep, which finds it
        before a newer record if that save never came. Returns how many were purged.
        Requests and answers only (no watcher, which a purge under way could keep
        waiting for good)."""
        try:
            revision = (await self._kv.get(self._key)).revision or 0
        except KeyNotFoundError:  # deleted, to start afresh: its parts are named by nothing
            revision = 0
        if revision != self._revision or revision == 0:
            return 0  # saved by another host since this one read it: not ours to judge
        swept = 0
        for key in await self.part_keys():
            if key in self._named:
                continue
            try:
                put = await self._js.get_msg(_KV_STREAM, subject=_KV_PREFIX + key)
            except NotFoundError:
                continue  # purged meanwhile
            if put.seq is not None and put.seq < revision:
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
        """The outbox in parts, each with where it is saved (the saved record's key for
        a part it names already, else one drawn now) and its digest."""
        largest = max(outbox_bytes((o,)) for o in outbox)
        if largest > self.max_bytes:
            raise RecordTooLarge(self._key, largest, self.max_bytes, "one of its outputs")
        parts = encode_parts(outbox, self.max_bytes)
        if len(parts) > MAX_OUTBOX_PARTS:
            size = outbox_bytes(outbox)
            limit = self.max_bytes * MAX_OUTBOX_PARTS
            raise RecordTooLarge(self._key, size, limit, f"its outbox ({len(outbox)} outputs)")
        keys = dict(self._parts)  # the same bytes twice: one part, named twice
        placed = []
        for value in parts:
            digest = hashlib.sha256(value).hexdigest()
            key = keys.setdefault(digest, part_key(self._key, secrets.token_hex(16)))
            placed.append((OutboxPart(key, digest), value))
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
        if key in self._named:
            return
        try:
            await self._js.purge_stream(_KV_STREAM, subject=_KV_PREFIX + key)
        except (NatsError, TimeoutError) as exc:  # swept at a later start
            log.warning("agent %s: outbox part %s not purged: %s", self._key, key, exc)


class _PartGone(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key
