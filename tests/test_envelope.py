"""Acts and events: one canonical encoding, strict decoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agora.core.acts import Performative
from agora.core.envelope import (
    MAX_PAYLOAD_BYTES,
    MAX_SUBJECTS,
    Act,
    Event,
    decode_fact,
    references_of,
)
from agora.core.errors import InputError, MalformedEnvelope, PayloadTooLarge
from tests.factories import make_act, make_event

texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200)


@given(payload=texts, act=st.sampled_from(list(Performative)), hops=st.integers(0, 32))
def test_acts_round_trip_exactly(payload: str, act: Performative, hops: int) -> None:
    original = make_act(payload=payload, act=act, hops=hops, in_reply_to="earlier")
    encoded = original.encode()
    assert Act.decode(encoded) == original
    assert Act.decode(encoded).encode() == encoded


def test_encoding_is_canonical_sorted_compact_utf8() -> None:
    encoded = make_act(payload="héllo").encode()
    document = json.loads(encoded)
    assert list(document) == sorted(document)
    assert b" " not in encoded.replace(b"h\xc3\xa9llo", b"")
    assert "héllo".encode() in encoded


def test_events_round_trip() -> None:
    event = make_event(subjects=("act-1", "act-2"))
    assert Event.decode(event.encode()) == event
    assert decode_fact("application/vnd.agora.event+json", event.encode()) == event
    assert references_of(event) == ("act-1", "act-2")


def _event_json(**changes: object) -> bytes:
    document = make_event().to_json()
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_event_json(subjects="act-1"), "subjects must be a list of fact ids"),
        (_event_json(subjects=["act-1", "act-1"]), "names one fact twice"),
        (_event_json(subjects=["a b"]), "subjects entry 'a b' is not allowed"),
        (_event_json(subjects=[7]), "subjects entry 7 is not allowed"),
        (
            _event_json(subjects=[f"act-{n}" for n in range(MAX_SUBJECTS + 1)]),
            f"at most {MAX_SUBJECTS} fact ids",
        ),
        (_event_json(kind="exploded"), "event kind 'exploded' is unknown"),
    ],
)
def test_bad_events_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Event.decode(data)


def _act_json(**changes: object) -> bytes:
    document = make_act().to_json()
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b'{"hops": ' + b"9" * 5000 + b"}", "not valid UTF-8 JSON: Exceeds the limit"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[]", "must be a JSON object"),
        (_act_json(extra=1), "unexpected \\[\"'extra'\"\\]"),
        (_act_json(act="shout"), "'shout' is not a FIPA performative"),
        (_act_json(channel="a.b"), "channel 'a.b' is not allowed"),
        (_act_json(hops=33), "hops 33 must be an integer from 0 to 32"),
        (_act_json(hops=True), "hops True must be an integer"),
        (_act_json(hops="3"), "hops '3' must be an integer"),
        (_act_json(v=3), "schema version 3 is not supported"),
        (_act_json(v=1, subject=None), "schema version 1 is not supported: expected 2"),
        (_act_json(payload=5), "payload must be a string"),
        (_act_json(sender="a b"), "sender 'a b' is not allowed"),
    ],
)
def test_bad_acts_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Act.decode(data)


def test_missing_field_is_named() -> None:
    document = make_act().to_json()
    del document["hops"]
    with pytest.raises(MalformedEnvelope, match=r"missing \['hops'\]"):
        Act.from_json(document)


def test_duplicate_keys_are_refused() -> None:
    data = _act_json()[:-1] + b',"payload":"second"}'
    with pytest.raises(MalformedEnvelope, match="'payload' twice"):
        Act.decode(data)


def test_oversized_payload_names_size_and_limit() -> None:
    with pytest.raises(PayloadTooLarge, match=f"the limit is {MAX_PAYLOAD_BYTES} bytes"):
        make_act(payload="é" * (MAX_PAYLOAD_BYTES // 2 + 1))


@pytest.mark.parametrize(("char", "json_bytes"), [('"', 2), ("\\", 2), ("\x01", 6)])
def test_the_payload_limit_counts_the_json_form(char: str, json_bytes: int) -> None:
    fits = MAX_PAYLOAD_BYTES // json_bytes
    assert make_act(payload=char * fits).payload == char * fits
    with pytest.raises(PayloadTooLarge, match=f"{(fits + 1) * json_bytes} bytes written as JSON"):
        make_act(payload=char * (fits + 1))


def test_lone_surrogate_is_refused_not_crashed() -> None:
    with pytest.raises(MalformedEnvelope, match="lone surrogate"):
        Act.decode(_act_json().replace(b'"ready"', b'"\\ud800"'))


def test_unknown_payload_type_is_refused() -> None:
    with pytest.raises(MalformedEnvelope, match="payloadType 'text/plain' is unknown"):
        decode_fact("text/plain", make_act().encode())
