"""What the host keeps for each agent between calls, in the ``agora-agents`` bucket.

- ``state``: the bytes the agent returned last time (the agent's own memory);
- ``recent``: the ids of the last messages it finished with, so a message handed to
  it again is recognised as processed (idempotency across restarts, and across hosts
  sharing the agent);
- ``unacked``: the ids of messages it finished with whose acknowledgement the server
  has not confirmed. A batch saved just before a crash comes back after the consumer's
  ack wait, however many messages came in between, and is recognised by these; an id
  leaves once a host confirms its acknowledgement (then it can never come back);
- ``last_seq``: the highest stream sequence it has finished with (for status);
- ``parents`` / ``conversations``: the hop budgets left on recent messages it was
  handed (with each one's conversation), and in its recent conversations, from which
  the host computes, and spends, the budget of what it emits;
- ``wake_at_ms``: when the agent asked to be called again with an empty inbox;
- ``outbox``: the signed envelopes (with their subjects and ids) of the last batch.
  The record is saved *before* they are published, so a crash in between publishes them
  again on restart (under the same ids, so nothing is duplicated) and never loses or
  re-decides them; the next batch's save replaces them, and an idle agent's record
  drops them.

Saving is compare-and-set on the bucket's revision: a second host running the same
agent cannot silently overwrite the first's progress; it gets :class:`RecordConflict`,
reloads, and redoes its batch on the fresh record.

Each saved record is signed with the agent's key (which every host running the agent
holds), so what is read back is what a host wrote: a record whose signature does not
verify is refused, and a record saved before records were signed is read without its
outbox (whoever can write the bucket could otherwise have planted old acts of the
agent there for a host to publish again). The signature covers the SHA-256 digest of
the record's JSON (a record is saved with every batch and runs to 100 KB or more:
Ed25519 hashes what it signs twice, SHA-512 each time, where the digest is one pass of
SHA-256); a record signed over its whole JSON, as saved before, still reads. The
outbox's envelopes, which are ASCII JSON, are kept as JSON strings (older records hold
them in base64, which still reads).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from agora.core import ed25519
from agora.core.errors import AgoraError, MalformedEnvelope
from agora.core.keys import SigningKey
from agora.core.signing import pae
from agora.host.controls import Handed

log = logging.getLogger(__name__)

MAX_RECENT: Final = 512
RECORD_TYPE: Final = "application/vnd.agora.agent-record+json"  # signed whole (older)
RECORD_DIGEST_TYPE: Final = "application/vnd.agora.agent-record.sha256"
MAX_UNACKED: Final = 4096  # 64 batches of 64 whose acknowledgements went unconfirmed
V = TypeVar("V")
MAX_PARENTS: Final = 256
MAX_CONVERSATIONS: Final = 128


class RecordConflict(AgoraError):
    """Another host saved this agent's record since we read it."""


class RecordTooLarge(AgoraError):
    """The record would not fit in one message to the server. Nothing was saved."""

    def __init__(self, agent: str, size: int, limit: int) -> None:
        super().__init__(f"agent {agent!r}: its record is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A signed envelope to publish: where, under which message id, and the bytes."""

    subject: str
    msg_id: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class AgentRecord:
    state: bytes = b""
    last_seq: int = 0
    recent: tuple[str, ...] = ()
    unacked: tuple[str, ...] = ()
    parents: dict[str, Handed] = field(default_factory=dict)
    conversations: dict[str, int] = field(default_factory=dict)
    wake_at_ms: int | None = None
    outbox: tuple[Outgoing, ...] = ()
    calls: int = 0
    saved_at_ms: int | None = None  # when the outbox was made (ms since the epoch)

    def finished(
        self,
        *,
        state: bytes,
        last_seq: int,
        ids: Iterable[str],
        parents: Mapping[str, Handed],
        conversations: Mapping[str, int],
        wake_at_ms: int | None,
        outbox: tuple[Outgoing, ...],
        at_ms: int,
        confirmed: Container[str] = frozenset(),
    ) -> AgentRecord:
        """The record after a batch. ``parents`` and ``conversations`` are the budgets the
        batch handed over or spent, in order: each becomes the newest of its kind.
        ``ids`` are the batch's messages, not acknowledged yet; ``confirmed`` are ids
        whose acknowledgement the server has confirmed since the record was read."""
        ids = tuple(ids)
        return AgentRecord(
            state=state,
            last_seq=max(self.last_seq, last_seq),
            recent=(*self.recent, *ids)[-MAX_RECENT:],
            unacked=(*self._unconfirmed(confirmed), *ids)[-MAX_UNACKED:],
            parents=_updated(self.parents, parents, MAX_PARENTS),
            conversations=_updated(self.conversations, conversations, MAX_CONVERSATIONS),
            wake_at_ms=wake_at_ms,
            outbox=outbox,
            calls=self.calls + 1,
            saved_at_ms=at_ms,
        )

    def sent(self, confirmed: Container[str] = frozenset()) -> AgentRecord:
        """The record once its outbox is published and ``confirmed`` acknowledged."""
        return replace(self, outbox=(), unacked=self._unconfirmed(confirmed))

    def _unconfirmed(self, confirmed: Container[str]) -> tuple[str, ...]:
        return tuple(i for i in self.unacked if i not in confirmed)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "state": base64.b64encode(self.state).decode(),
                "last_seq": self.last_seq,
                "recent": list(self.recent),
                "unacked": list(self.unacked),
                "parents": {k: [h.hops, h.conversation] for k, h in self.parents.items()},
                "conversations": self.conversations,
                "wake_at_ms": self.wake_at_ms,
                "outbox": [[o.subject, o.msg_id, o.envelope.decode()] for o in self.outbox],
                "calls": self.calls,
                "saved_at_ms": self.saved_at_ms,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> AgentRecord:
        try:
            obj: Any = json.loads(data)
            return cls(
                state=base64.b64decode(obj["state"], validate=True),
                last_seq=int(obj["last_seq"]),
                recent=tuple(str(i) for i in obj["recent"]),
                unacked=tuple(str(i) for i in obj.get("unacked", ())),  # absent from older
                parents={str(k): _handed(v) for k, v in obj["parents"].items()},
                conversations={str(k): int(v) for k, v in obj["conversations"].items()},
                wake_at_ms=_optional_int(obj["wake_at_ms"]),
                outbox=tuple(Outgoing(str(s), str(i), _envelope(e)) for s, i, e in obj["outbox"]),
                calls=int(obj["calls"]),
                saved_at_ms=_optional_int(obj.get("saved_at_ms")),  # absent from older records
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedEnvelope(f"agent record is unreadable: {exc}") from exc


def _envelope(saved: object) -> bytes:
    """An outbox envelope as the record keeps it: its JSON text, or (in records saved
    before) its base64."""
    if not isinstance(saved, str):
        raise TypeError(f"an outbox envelope must be a string, not {type(saved).__name__}")
    if saved.startswith("{"):  # never the first character of base64
        return saved.encode()
    return base64.b64decode(saved, validate=True)


def signed_part(body: bytes) -> bytes:
    """What a record's signature covers: DSSE's pre-authentication encoding of the
    SHA-256 digest of the record's JSON."""
    return pae(RECORD_DIGEST_TYPE, hashlib.sha256(body).digest())


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _handed(value: object) -> Handed:
    if isinstance(value, int) and not isinstance(value, bool):
        return Handed(value, "")  # a record saved before parents kept their conversation
    if not (isinstance(value, list) and len(value) == 2):
        raise TypeError(f"a parent must be [hops, conversation], not {value!r}")
    hops, conversation = value
    if not (isinstance(hops, int) and isinstance(conversation, str)):
        raise TypeError(f"a parent must be [hops, conversation], not {value!r}")
    return Handed(hops, conversation)


def _updated(old: dict[str, V], new: Mapping[str, V], limit: int) -> dict[str, V]:
    """``old`` with ``new`` laid over it, each key of ``new`` moved to the end (newest),
    keeping the newest ``limit``."""
    merged = dict(old)
    for key, value in new.items():
        merged.pop(key, None)
        merged[key] = value
    if len(merged) <= limit:
        return merged
    return dict(list(merged.items())[-limit:])


class RecordStore:
    """Load and compare-and-set save one agent's record, of at most ``max_bytes``,
    signed with the agent's ``key``: the record's JSON, a newline, and the signature
    (base64) over :func:`signed_part` of the JSON."""

    def __init__(self, kv: KeyValue, agent: str, *, max_bytes: int, key: SigningKey) -> None:
        self._kv = kv
        self._key = agent
        self._signer = key
        self._revision = 0
        self.max_bytes = max_bytes

    async def load(self) -> AgentRecord:
        try:
            entry = await self._kv.get(self._key)
        except KeyNotFoundError:
            self._revision = 0
            return AgentRecord()
        self._revision = entry.revision or 0
        try:
            return self._read(entry.value or b"")
        except MalformedEnvelope as exc:
            raise MalformedEnvelope(f"agent {self._key!r}: {exc}") from exc

    def _read(self, stored: bytes) -> AgentRecord:
        body, newline, signature = stored.rpartition(b"\n")
        if not newline:  # saved before records were signed: its outbox is not trusted
            record = AgentRecord.decode(stored)
            if record.outbox:
                log.warning(
                    "agent %s: its saved record is unsigned (older); its %d unsent messages "
                    "are not published",
                    self._key,
                    len(record.outbox),
                )
            return replace(record, outbox=())
        try:
            signed = base64.b64decode(signature, validate=True)
        except binascii.Error:
            signed = b""
        public_key = self._signer.public_key
        if not (
            ed25519.verifies(public_key, signed, signed_part(body))
            or ed25519.verifies(public_key, signed, pae(RECORD_TYPE, body))  # saved before
        ):
            raise MalformedEnvelope(
                "its saved record is not signed by its key: something other than a host "
                f"wrote it; delete the key {self._key!r} in the agents bucket to start the "
                "agent afresh"
            )
        return AgentRecord.decode(body)

    async def save(self, record: AgentRecord) -> None:
        """Raises :class:`RecordConflict`, or :class:`RecordTooLarge` before sending."""
        body = record.encode()
        signature = base64.b64encode(self._signer.sign(signed_part(body)))
        data = body + b"\n" + signature
        if len(data) > self.max_bytes:
            raise RecordTooLarge(self._key, len(data), self.max_bytes)
        try:
            if self._revision == 0:
                self._revision = await self._kv.create(self._key, data)
            else:
                self._revision = await self._kv.update(self._key, data, last=self._revision)
        except KeyWrongLastSequenceError as exc:
            raise RecordConflict(
                f"agent {self._key!r} was saved by another host since this one read it: "
                "run each agent on one host at a time"
            ) from exc
