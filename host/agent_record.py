"""What the host keeps for each agent between calls, in the ``agora-agents`` bucket.

- ``state``: the bytes the agent returned last time (the agent's own memory);
- ``recent``: the ids of the last messages it finished with, so a message handed to
  it again is recognised as processed (idempotency across restarts, and across hosts
  sharing the agent);
- ``unacked``: the ids of messages it finished with whose acknowledgement the server
  has not confirmed in time. A batch saved just before a crash comes back after the
  consumer's ack wait, however many messages came in between, and is recognised by
  these. An id leaves once a host has the acknowledgement of its batch confirmed
  within the ack wait of the batch's arrival, every message of it handed over for the
  first time (then no copy can come back, nor be in another host's hands); the ids of
  a batch handed over again stay until newer ones push them out (``MAX_UNACKED``);
- ``last_seq``: the highest stream sequence it has finished with (for status);
- ``parents`` / ``conversations``: the hop budgets left on recent messages it was
  handed (with each one's conversation), and in its recent conversations, from which
  the host computes, and spends, the budget of what it emits;
- ``wake_at_ms``: when the agent asked to be called again with an empty inbox;
- ``outbox``: the signed envelopes (with their subjects and ids) of the last batch.
  The record is saved *before* they are published, so a crash in between publishes them
  again on restart (under the same ids, so nothing is duplicated) and never loses or
  re-decides them; the next batch's save replaces them, and an idle agent's record
  drops them. An outbox too large to go in one message to the server is saved in parts
  (:class:`OutboxPart`) under keys of their own, before the record that names them by
  their SHA-256 digest; a part is purged once no saved record names it.

This module is the record and its JSON; :mod:`agora.host.record_store` saves and loads
it. Each saved record is signed with the agent's key, over :func:`signed_part`: the
SHA-256 digest of the record's JSON (a record is saved with every batch and runs to 100
KB or more: Ed25519 hashes what it signs twice, SHA-512 each time, where the digest is
one pass of SHA-256); a record signed over its whole JSON, as saved before, still reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import string
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from agora.core.errors import AgoraError, MalformedEnvelope
from agora.core.signing import pae
from agora.host.config import DEFAULT_REMEMBERED
from agora.host.controls import Handed

log = logging.getLogger(__name__)

MAX_RECENT: Final = 512
RECORD_TYPE: Final = "application/vnd.agora.agent-record+json"  # signed whole (older)
RECORD_DIGEST_TYPE: Final = "application/vnd.agora.agent-record.sha256"
MAX_UNACKED: Final = 4096  # 16 batches of 256 whose acknowledgements went unconfirmed
V = TypeVar("V")
MAX_PARENTS: Final = 256
_PART_KEY: Final = re.compile(r"[A-Za-z0-9_-]+\.outbox\.[0-9a-f]{32}")
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


class RecordConflict(AgoraError):
    """Another host saved this agent's record since we read it."""


class UntrustedRecord(MalformedEnvelope):
    """The saved record is not one a host wrote: unsigned, or not signed by the agent's
    key. Nothing in it may be used."""


class RecordTooLarge(AgoraError):
    """The record, with its outbox in parts, would not fit in what the server takes.
    Nothing was saved. ``what`` says what did not fit, ``size`` how large it is and
    ``limit`` what it may take."""

    def __init__(self, agent: str, size: int, limit: int, what: str = "its record") -> None:
        super().__init__(f"agent {agent!r}: {what} takes {size} bytes; the limit is {limit}")
        self.what = what
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A signed envelope to publish: where, under which message id, and the bytes."""

    subject: str
    msg_id: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class OutboxPart:
    """Where part of a saved outbox is kept: its key in the bucket, and the SHA-256
    digest (hex) of what was put there, which the record's signature covers."""

    key: str
    digest: str


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
        remembered: int = DEFAULT_REMEMBERED,
    ) -> AgentRecord:
        """The record after a batch. ``parents`` and ``conversations`` are the budgets the
        batch handed over or spent, in order: each becomes the newest of its kind.
        ``ids`` are the batch's messages, not acknowledged yet; ``confirmed`` are ids
        whose acknowledgement the server has confirmed since the record was read. The
        budgets of the newest ``remembered`` conversations are kept, and of as many
        messages (at least :data:`MAX_PARENTS`)."""
        ids = tuple(ids)
        return AgentRecord(
            state=state,
            last_seq=max(self.last_seq, last_seq),
            recent=(*self.recent, *ids)[-MAX_RECENT:],
            unacked=(*self._unconfirmed(confirmed), *ids)[-MAX_UNACKED:],
            parents=_updated(self.parents, parents, max(MAX_PARENTS, remembered)),
            conversations=_updated(self.conversations, conversations, remembered),
            wake_at_ms=wake_at_ms,
            outbox=outbox,
            calls=self.calls + 1,
            saved_at_ms=at_ms,
        )

    def sent(self, confirmed: Container[str] = frozenset()) -> AgentRecord:
        """The record once its outbox is published and ``confirmed`` acknowledged."""
        return replace(self, outbox=(), unacked=self._unconfirmed(confirmed))

    def forgetting(self, confirmed: Container[str]) -> AgentRecord:
        """The record once ``confirmed`` are acknowledged (its outbox kept)."""
        return replace(self, unacked=self._unconfirmed(confirmed))

    def _unconfirmed(self, confirmed: Container[str]) -> tuple[str, ...]:
        return tuple(i for i in self.unacked if i not in confirmed)

    def encode(self, parts: Iterable[OutboxPart] = ()) -> bytes:
        """The record as JSON, written out here rather than by :func:`json.dumps`, which
        checks every character of a string for escaping: a record holds some 50 KB of
        ids and, while a batch is unsent, up to 256 envelopes. ``parts``: where its
        outbox is saved when it does not fit in the record (see :class:`RecordStore`).

        Its ids and conversations are names (letters, digits, '-' and '_', checked as
        every act is made), so each list of them is one space-separated string, and
        base64 needs no escaping either: both are written as they are (a list with
        anything else in it is escaped as usual)."""
        parents = self.parents.values()
        outbox = _outbox_items(self.outbox)
        places = ",".join(f"[{json.dumps(p.key)},{json.dumps(p.digest)}]" for p in parts)
        return (
            f'{{"state":"{base64.b64encode(self.state).decode()}",'
            f'"last_seq":{int(self.last_seq)},'
            f'"recent":{_name_list(self.recent)},'
            f'"unacked":{_name_list(self.unacked)},'
            f'"parents":[{_name_list(self.parents)},{json.dumps([h.hops for h in parents])},'
            f"{_name_list([h.conversation or '.' for h in parents])}],"
            f'"conversations":[{_name_list(self.conversations)},'
            f"{json.dumps(list(self.conversations.values()))}],"
            f'"wake_at_ms":{json.dumps(self.wake_at_ms)},'
            f'"outbox":[{outbox}],'
            f'"outbox_parts":[{places}],'
            f'"calls":{int(self.calls)},'
            f'"saved_at_ms":{json.dumps(self.saved_at_ms)}}}'
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> AgentRecord:
        """A record as :meth:`encode` writes it, or as older versions wrote it (lists of
        ids, budgets as mappings, outbox envelopes in base64, fields added since),
        without the parts of its outbox saved elsewhere."""
        return cls.decode_with_parts(data)[0]

    @classmethod
    def decode_with_parts(cls, data: bytes) -> tuple[AgentRecord, tuple[OutboxPart, ...]]:
        """A record as :meth:`decode` reads it, and where the rest of its outbox is."""
        try:
            obj: Any = json.loads(data)
            parts = tuple(OutboxPart(_key(k), _digest(d)) for k, d in obj.get("outbox_parts", []))
            record = cls(
                state=base64.b64decode(obj["state"], validate=True),
                last_seq=int(obj["last_seq"]),
                recent=_names(obj["recent"]),
                unacked=_names(obj.get("unacked", "")),
                parents=_parents(obj["parents"]),
                conversations=_conversations(obj["conversations"]),
                wake_at_ms=_optional_int(obj["wake_at_ms"]),
                outbox=_outbox(obj["outbox"]),
                calls=int(obj["calls"]),
                saved_at_ms=_optional_int(obj.get("saved_at_ms")),
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise MalformedEnvelope(f"agent record is unreadable: {exc}") from exc
        return record, parts


def _outbox_items(outbox: Iterable[Outgoing]) -> str:
    """The outbox as the items of a JSON list."""
    return ",".join(map(_outbox_item, outbox))


def _outbox_item(outgoing: Outgoing) -> str:
    """``[subject, id, envelope in base64]``, in ASCII (one character, one byte)."""
    return (
        f"[{json.dumps(outgoing.subject)},{json.dumps(outgoing.msg_id)},"
        f'"{base64.b64encode(outgoing.envelope).decode()}"]'
    )


def outbox_bytes(outbox: Iterable[Outgoing]) -> int:
    """What the outbox takes saved, as one JSON list."""
    return len(_outbox_items(outbox)) + 2


def _outbox(saved: object) -> tuple[Outgoing, ...]:
    if not isinstance(saved, list):
        raise TypeError(f"an outbox must be a list, not {type(saved).__name__}")
    return tuple(Outgoing(str(s), str(i), _envelope(e)) for s, i, e in saved)


def encode_parts(outbox: Iterable[Outgoing], max_bytes: int) -> list[bytes]:
    """The outbox as JSON lists of at most ``max_bytes`` each, in order. Raises
    ValueError if one envelope alone does not fit."""
    parts: list[bytes] = []
    items: list[str] = []
    size = 2  # the brackets
    for item in map(_outbox_item, outbox):
        if len(item) + 2 > max_bytes:
            raise ValueError(f"an outbox envelope takes {len(item)} bytes saved")
        if items and size + 1 + len(item) > max_bytes:
            parts.append(f"[{','.join(items)}]".encode())
            items, size = [], 2
        size += len(item) + (1 if items else 0)
        items.append(item)
    if items:
        parts.append(f"[{','.join(items)}]".encode())
    return parts


def decode_part(data: bytes) -> tuple[Outgoing, ...]:
    try:
        return _outbox(json.loads(data))
    except (ValueError, TypeError) as exc:
        raise MalformedEnvelope(f"an outbox part is unreadable: {exc}") from exc


def part_key(agent: str, name: str) -> str:
    """The key an outbox part of ``agent``'s is saved under: ``name`` is 32 hex digits,
    drawn at random for each part a save puts (records saved before named a part by
    the first 32 digits of its digest: they still read)."""
    return f"{agent}.outbox.{name}"


def is_part_of(agent: str, key: str) -> bool:
    """Whether ``key`` (a part key, as a record names it) is one of ``agent``'s."""
    return key.startswith(f"{agent}.outbox.")


def _key(saved: object) -> str:
    if not (isinstance(saved, str) and _PART_KEY.fullmatch(saved)):
        raise TypeError(f"an outbox part's key must be AGENT.outbox.HEX32, not {saved!r:.80}")
    return saved


def _digest(saved: object) -> str:
    if not (isinstance(saved, str) and _DIGEST.fullmatch(saved)):
        raise TypeError(f"an outbox part's digest must be 64 hex digits, not {saved!r:.80}")
    return saved


def _name_list(names: Iterable[str]) -> str:
    """``names`` as one JSON string, space-separated, written as it is when it holds
    nothing but names (checked in one pass over its bytes); anything else, as a JSON
    list of strings (which :func:`_names` reads too)."""
    names = list(names)
    joined = " ".join(names)
    spaced = joined.count(" ") != max(len(names) - 1, 0)  # a space in a name
    if spaced or "" in names or joined.encode().translate(None, _NAME_LIST_BYTES):
        return json.dumps(names)
    return f'"{joined}"'


_NAME_LIST_BYTES: Final = (string.ascii_letters + string.digits + "-_. ").encode()


def _names(saved: object) -> tuple[str, ...]:
    """Names saved as one space-separated string (or, before, as a list)."""
    if isinstance(saved, str):
        return tuple(saved.split())
    if isinstance(saved, list):
        return tuple(str(i) for i in saved)
    raise TypeError(f"a list of names must be a string, not {type(saved).__name__}")


def _budgets(names: object, hops: object) -> list[tuple[str, int]]:
    ids = _names(names)
    if not (isinstance(hops, list) and len(hops) == len(ids)):
        raise TypeError(f"{len(ids)} names need as many hop budgets, not {hops!r:.80}")
    return [(i, int(h)) for i, h in zip(ids, hops, strict=True)]


def _parents(saved: object) -> dict[str, Handed]:
    if isinstance(saved, dict):  # saved before: {id: [hops, conversation]}
        return {str(k): _handed(v) for k, v in saved.items()}
    if not (isinstance(saved, list) and len(saved) == 3):
        raise TypeError("parents must be [ids, hops, conversations]")
    names, hops, conversations = saved
    budgets = _budgets(names, hops)
    talks = _names(conversations)
    if len(talks) != len(budgets):
        raise TypeError(f"{len(budgets)} parents need as many conversations, not {len(talks)}")
    return {i: Handed(h, "" if c == "." else c) for (i, h), c in zip(budgets, talks, strict=True)}


def _conversations(saved: object) -> dict[str, int]:
    if isinstance(saved, dict):  # saved before: {conversation: hops}
        return {str(k): int(v) for k, v in saved.items()}
    if not (isinstance(saved, list) and len(saved) == 2):
        raise TypeError("conversations must be [ids, hops]")
    return dict(_budgets(*saved))


def _envelope(saved: object) -> bytes:
    """An outbox envelope as the record keeps it: its base64 (or its JSON text, as
    some records were saved)."""
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
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"expected a whole number or null, not {value!r}")


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
