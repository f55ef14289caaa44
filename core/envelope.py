"""The typed records that travel and get recorded: speech acts and host events.

Both are frozen values with one canonical byte encoding (UTF-8 JSON, sorted keys, no
spaces), which is what gets signed. Decoding is strict: unknown or missing fields, wrong
types, duplicate keys, oversized payloads and bad names are all refused with an
:class:`~agora.core.errors.InputError` that names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from agora.core.acts import Performative, check_channel, check_name, parse_act
from agora.core.errors import MalformedEnvelope, PayloadTooLarge, shown

SCHEMA_VERSION: Final = 2  # 2: an event names the facts it concerns in a list, `subjects`
MAX_PAYLOAD_BYTES: Final = 64 * 1024  # as written in the fact's JSON
MAX_JSON_BYTES_PER_BYTE: Final = 6  # a control character: \u0001
MAX_HOPS: Final = 32
MAX_TEXT_FIELD_CHARS: Final = 1024
MAX_PROVENANCE_ENTRIES: Final = 16
MAX_SUBJECTS: Final = 1024  # an agent's largest batch: one event covers a whole batch

ACT_PAYLOAD_TYPE: Final = "application/vnd.agora.act+json"
EVENT_PAYLOAD_TYPE: Final = "application/vnd.agora.event+json"
PAYLOAD_TYPES: Final = frozenset({ACT_PAYLOAD_TYPE, EVENT_PAYLOAD_TYPE})


@dataclass(frozen=True, slots=True)
class Act:
    """One speech act on one channel.

    ``id``, ``sender``, ``hops`` and ``time_ms`` are stamped by the host (or the bridge),
    never taken from an agent. ``hops`` is the budget left: a message with 0 hops is
    recorded but delivered to no agent.
    """

    id: str
    conversation: str
    sender: str
    channel: str
    act: Performative
    payload: str
    hops: int
    time_ms: int
    in_reply_to: str | None = None
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.id, field="id")
        check_name(self.conversation, field="conversation")
        check_name(self.sender, field="sender")
        check_channel(self.channel)
        if self.in_reply_to is not None:
            check_name(self.in_reply_to, field="in_reply_to")
        check_payload(self.payload)
        _check_int(self.hops, "hops", 0, MAX_HOPS)
        _check_int(self.time_ms, "time_ms", 0, 2**53)
        _check_text_map(self.provenance, "provenance")

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "conversation": self.conversation,
            "sender": self.sender,
            "channel": self.channel,
            "act": self.act.value,
            "payload": self.payload,
            "hops": self.hops,
            "time_ms": self.time_ms,
            "in_reply_to": self.in_reply_to,
            "provenance": self.provenance,
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: object) -> Act:
        fields = _fields(obj, "act", _ACT_KEYS)
        act = parse_act(fields["act"])
        try:
            return cls(
                id=fields["id"],
                conversation=fields["conversation"],
                sender=fields["sender"],
                channel=fields["channel"],
                act=act,
                payload=fields["payload"],
                hops=fields["hops"],
                time_ms=fields["time_ms"],
                in_reply_to=fields["in_reply_to"],
                provenance=fields["provenance"],
            )
        except TypeError as exc:  # pragma: no cover - _fields checks every key first
            raise MalformedEnvelope(f"act fields are wrong: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> Act:
        return cls.from_json(parse_json(data, what="act"))


class EventKind(StrEnum):
    """What the host or the bridge records besides the acts themselves."""

    DELIVERED = "delivered"
    REFUSED = "refused"
    FAULT = "fault"
    QUARANTINED = "quarantined"
    KILLED = "killed"
    RESUMED = "resumed"
    EDITED = "edited"
    DELETED = "deleted"
    NOTE = "note"


_EVENTS_BY_NAME: Final = {k.value: k for k in EventKind}


@dataclass(frozen=True, slots=True)
class Event:
    """Something the host or the bridge did or refused, recorded beside the acts.

    ``actor`` is the identity that signs the event; ``subjects`` are the facts it
    concerns, if any (one ``delivered`` or ``refused`` event covers every act of a batch
    handed over or refused for the same reason on the same channel); ``reason`` is a
    short machine-readable code and ``detail`` a sentence.
    """

    id: str
    kind: EventKind
    actor: str
    time_ms: int
    reason: str
    detail: str = ""
    subjects: tuple[str, ...] = ()
    channel: str | None = None
    agent: str | None = None
    data: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.id, field="id")
        check_name(self.actor, field="actor")
        check_name(self.reason, field="reason")
        _check_text(self.detail, "detail")
        _check_int(self.time_ms, "time_ms", 0, 2**53)
        _check_subjects(self.subjects)
        if self.channel is not None:
            check_channel(self.channel)
        if self.agent is not None:
            check_name(self.agent, field="agent")
        _check_text_map(self.data, "data")

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "actor": self.actor,
            "time_ms": self.time_ms,
            "reason": self.reason,
            "detail": self.detail,
            "subjects": list(self.subjects),
            "channel": self.channel,
            "agent": self.agent,
            "data": self.data,
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: object) -> Event:
        fields = _fields(obj, "event", _EVENT_KEYS)
        kind = _EVENTS_BY_NAME.get(fields["kind"]) if isinstance(fields["kind"], str) else None
        if kind is None:
            raise MalformedEnvelope(
                f"event kind {shown(fields['kind'])} is unknown: expected one of "
                f"{', '.join(sorted(_EVENTS_BY_NAME))}"
            )
        return cls(
            id=fields["id"],
            kind=kind,
            actor=fields["actor"],
            time_ms=fields["time_ms"],
            reason=fields["reason"],
            detail=fields["detail"],
            subjects=_subjects(fields["subjects"]),
            channel=fields["channel"],
            agent=fields["agent"],
            data=fields["data"],
        )

    @classmethod
    def decode(cls, data: bytes) -> Event:
        return cls.from_json(parse_json(data, what="event"))


Fact = Act | Event


def decode_fact(payload_type: str, body: bytes) -> Fact:
    """The act or event carried by a verified envelope body."""
    if payload_type == ACT_PAYLOAD_TYPE:
        return Act.decode(body)
    if payload_type == EVENT_PAYLOAD_TYPE:
        return Event.decode(body)
    raise unknown_payload_type(payload_type)


def unknown_payload_type(payload_type: str) -> MalformedEnvelope:
    return MalformedEnvelope(
        f"payloadType {shown(payload_type)} is unknown: expected "
        f"{ACT_PAYLOAD_TYPE!r} or {EVENT_PAYLOAD_TYPE!r}"
    )


def references_of(fact: Fact) -> tuple[str, ...]:
    """The earlier facts a fact points at: the act a reply answers, or an event's subjects."""
    if isinstance(fact, Act):
        return () if fact.in_reply_to is None else (fact.in_reply_to,)
    return fact.subjects


def payload_type_of(fact: Fact) -> str:
    return ACT_PAYLOAD_TYPE if isinstance(fact, Act) else EVENT_PAYLOAD_TYPE


def canonical_json(obj: object) -> bytes:
    """The one byte encoding agora signs: UTF-8 JSON, sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json(data: bytes, *, what: str) -> object:
    """Parse untrusted JSON, refusing duplicate keys and invalid UTF-8."""
    try:
        return _strict_decoder.decode(data.decode())
    except _DuplicateKeyError as exc:
        raise MalformedEnvelope(f"{what} has the key {shown(exc.args[0])} twice") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or a number past Python's digit limit
        raise MalformedEnvelope(f"{what} is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise MalformedEnvelope(f"{what} is JSON nested too deeply") from exc


def check_payload(payload: object) -> str:
    """A payload of at most :data:`MAX_PAYLOAD_BYTES` as it is written in the fact (JSON).

    The limit counts the JSON form, where a quote or a backslash takes 2 bytes and a
    control character 6, so that any act that passes signs to an envelope within
    ``agora verify``'s limit."""
    if not isinstance(payload, str):
        raise MalformedEnvelope(f"payload must be a string, not {type(payload).__name__}")
    size = len(_utf8(payload, "payload"))
    at_least = size > MAX_PAYLOAD_BYTES  # too large already: not written out to count
    if MAX_PAYLOAD_BYTES // MAX_JSON_BYTES_PER_BYTE < size <= MAX_PAYLOAD_BYTES:
        size = len(json.dumps(payload, ensure_ascii=False).encode()) - 2  # escapes count
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload is {'at least ' * at_least}{size} bytes written as JSON (a quote or "
            f"backslash takes 2 bytes, a control character 6): the limit is "
            f"{MAX_PAYLOAD_BYTES} bytes"
        )
    return payload


def _utf8(text: str, name: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise MalformedEnvelope(
            f"{name} holds a lone surrogate at position {exc.start}: text must be valid Unicode"
        ) from exc


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def _fields(obj: object, what: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedEnvelope(f"{what} must be a JSON object, not {type(obj).__name__}")
    if "v" in obj and obj["v"] != SCHEMA_VERSION:  # before the fields: they differ by version
        raise MalformedEnvelope(
            f"{what} schema version {shown(obj['v'])} is not supported: expected {SCHEMA_VERSION}"
        )
    if obj.keys() != keys:
        missing = sorted(keys - obj.keys())
        extra = sorted(obj.keys() - keys)
        raise MalformedEnvelope(
            f"{what} fields are wrong: missing {missing or 'none'}, unexpected "
            f"{[shown(k) for k in extra] or 'none'}"
        )
    return obj


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise MalformedEnvelope(f"{name} {shown(value)} must be an integer from {low} to {high}")


def _subjects(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MalformedEnvelope(f"subjects must be a list of fact ids, got {shown(value)}")
    return tuple(value)


def _check_subjects(subjects: object) -> None:
    if not isinstance(subjects, tuple) or len(subjects) > MAX_SUBJECTS:
        raise MalformedEnvelope(
            f"subjects must be a list of at most {MAX_SUBJECTS} fact ids, got {shown(subjects)}"
        )
    for subject in subjects:
        check_name(subject, field="subjects entry")
    if len(set(subjects)) != len(subjects):
        raise MalformedEnvelope("subjects names one fact twice: each must appear once")


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT_FIELD_CHARS:
        raise MalformedEnvelope(
            f"{name} must be a string of at most {MAX_TEXT_FIELD_CHARS} characters, "
            f"got {shown(value)}"
        )
    _utf8(value, name)


def _check_text_map(value: object, name: str) -> None:
    if not isinstance(value, dict) or len(value) > MAX_PROVENANCE_ENTRIES:
        raise MalformedEnvelope(
            f"{name} must be an object of at most {MAX_PROVENANCE_ENTRIES} string entries, "
            f"got {shown(value)}"
        )
    for key, item in value.items():
        check_name(key, field=f"{name} key")
        _check_text(item, f"{name}[{key!r}]")


_strict_decoder: Final = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
_ACT_KEYS: Final = frozenset(Act("x", "x", "x", "x", Performative.INFORM, "", 0, 0).to_json())
_EVENT_KEYS: Final = frozenset(Event("x", EventKind.NOTE, "x", 0, "x").to_json())
