"""DSSE envelopes: Ed25519 over PAE, verified against the registry on the bytes received."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from securesystemslib.dsse import Envelope as ReferenceEnvelope
from securesystemslib.signer import SSlibKey

from agora.core.admission import admit
from agora.core.envelope import ACT_PAYLOAD_TYPE, MAX_PAYLOAD_BYTES, EventKind
from agora.core.errors import MalformedEnvelope, PayloadTooLarge, SignatureError, UnknownKey
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import MAX_ENVELOPE_BYTES, pae, sign_body, sign_fact, verify_envelope
from tests.factories import make_act, make_event


def test_pae_matches_the_dsse_spec() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_signed_act_verifies_and_names_its_signer(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    act = make_act(sender="synth-agent")
    verified = verify_envelope(sign_fact(act, keys["synth-agent"]), registry)
    assert verified.fact == act
    assert verified.signer.name == "synth-agent"
    assert verified.payload_type == ACT_PAYLOAD_TYPE


@pytest.mark.parametrize("char", ["x", '"', "\\", "\x01", "é", "\U0001f600"])
def test_the_largest_act_allowed_signs_to_an_envelope_verify_accepts(
    char: str, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    written = len(json.dumps(char, ensure_ascii=False).encode()) - 2
    act = make_act(payload=char * (MAX_PAYLOAD_BYTES // written), in_reply_to="act-" + "p" * 60)
    assert verify_envelope(sign_fact(act, keys["synth-agent"]), registry).fact == act


def test_no_envelope_past_the_limit_is_signed(keys: dict[str, SigningKey]) -> None:
    body = b"x" * (MAX_ENVELOPE_BYTES * 3 // 4)
    with pytest.raises(PayloadTooLarge, match=f"the limit is {MAX_ENVELOPE_BYTES} bytes"):
        sign_body(body, ACT_PAYLOAD_TYPE, keys["synth-agent"])


def test_an_independent_dsse_implementation_accepts_our_envelopes(
    keys: dict[str, SigningKey],
) -> None:
    key = keys["synth-agent"]
    envelope = json.loads(sign_fact(make_act(), key))
    reference_key = SSlibKey(
        keyid=key.keyid,
        keytype="ed25519",
        scheme="ed25519",
        keyval={"public": key.public_key.hex()},
    )
    ReferenceEnvelope.from_dict(envelope).verify([reference_key], 1)


def _tamper(envelope: bytes, **changes: object) -> bytes:
    document = json.loads(envelope)
    document.update(changes)
    return json.dumps(document).encode()


def test_a_changed_payload_fails(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    envelope = sign_fact(make_act(payload="yes"), keys["synth-agent"])
    body = make_act(payload="no").encode()
    forged = _tamper(envelope, payload=base64.b64encode(body).decode())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(forged, registry)


def test_a_changed_payload_type_fails(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    envelope = sign_fact(make_act(), keys["synth-agent"])
    with pytest.raises(SignatureError):
        verify_envelope(_tamper(envelope, payloadType="application/vnd.agora.event+json"), registry)


def test_unknown_key_is_refused(registry: KeyRegistry) -> None:
    stranger = SigningKey.generate("synth-agent")
    with pytest.raises(UnknownKey, match="no identity holds"):
        verify_envelope(sign_fact(make_act(), stranger), registry)


def test_keyid_is_only_a_hint(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    """Claiming another identity's keyid does not make a signature verify as them."""
    stranger = SigningKey.generate("synth-agent")
    envelope = json.loads(sign_fact(make_act(), stranger))
    envelope["signatures"][0]["keyid"] = keys["synth-agent"].keyid
    with pytest.raises(SignatureError):
        verify_envelope(json.dumps(envelope).encode(), registry)


def test_sender_must_be_the_signer(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    forged_sender = make_act(sender="maintainer")
    with pytest.raises(SignatureError, match="sender 'maintainer' is not its signer 'synth-agent'"):
        verify_envelope(sign_fact(forged_sender, keys["synth-agent"]), registry)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'{"payload":"","payloadType":"x","signatures":[]}',
        b'{"payload":"%%%","payloadType":"x","signatures":[{"keyid":"k","sig":"AA=="}]}',
        b'{"payload":"","payloadType":1,"signatures":[{"keyid":"k","sig":"AA=="}]}',
    ],
)
def test_malformed_envelopes_are_refused(data: bytes, registry: KeyRegistry) -> None:
    with pytest.raises(MalformedEnvelope):
        verify_envelope(data, registry)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda e: e.replace(b'","payloadType"', b'",\n"payloadType"'), "more than one line"),
        (lambda e: e.replace(b'{"payload"', b'{"payloadType":"x","payload"', 1), "twice"),
        (lambda e: "\ufeff".encode() + e, "not valid UTF-8 JSON"),
        (lambda e: e.decode().encode("utf-16"), "not valid UTF-8 JSON"),
    ],
    ids=["newline", "a-key-twice", "byte-order-mark", "utf-16"],
)
def test_an_envelope_is_read_as_strictly_as_the_fact_log_reads_it(
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    change: Callable[[bytes], bytes],
    said: str,
) -> None:
    # Python's json.loads takes each of these; `agora verify` takes none, so none may be
    # taken in (and recorded) either.
    envelope = sign_fact(make_act(sender="synth-agent"), keys["synth-agent"])
    assert verify_envelope(envelope, registry).signer.name == "synth-agent"
    with pytest.raises(MalformedEnvelope, match=said):
        verify_envelope(change(envelope), registry)


def test_short_signature_is_refused(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    envelope = json.loads(sign_fact(make_act(), keys["synth-agent"]))
    envelope["signatures"][0]["sig"] = base64.b64encode(b"x" * 10).decode()
    with pytest.raises(SignatureError, match="10 bytes"):
        verify_envelope(json.dumps(envelope).encode(), registry)


def test_oversized_envelope_is_refused_before_parsing(registry: KeyRegistry) -> None:
    with pytest.raises(PayloadTooLarge, match=f"limit is {MAX_ENVELOPE_BYTES}"):
        verify_envelope(b" " * (MAX_ENVELOPE_BYTES + 1), registry)


@pytest.mark.parametrize(
    "data", [b"1" * 5000, b'{"payloadType": ' + b"7" * 5000 + b"}"], ids=["number", "field"]
)
def test_an_envelope_with_a_number_too_long_to_read_is_malformed(
    data: bytes, registry: KeyRegistry
) -> None:
    # Python refuses to read integers of more than 4,300 digits (a ValueError that is
    # no JSONDecodeError): it is refused as any bad envelope is, not raised past it
    with pytest.raises(MalformedEnvelope, match="not valid UTF-8 JSON"):
        verify_envelope(data, registry)


def test_garbage_body_under_a_valid_signature_is_malformed(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    envelope = sign_body(b"{]", ACT_PAYLOAD_TYPE, keys["synth-agent"])
    with pytest.raises(MalformedEnvelope, match="not valid UTF-8 JSON"):
        verify_envelope(envelope, registry)


def test_a_payload_type_no_signature_can_cover_is_malformed(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    envelope = json.loads(sign_fact(make_act(), keys["synth-agent"]))
    for payload_type in ("\ud800", "application/x-other"):
        envelope["payloadType"] = payload_type
        with pytest.raises(MalformedEnvelope, match=r"payloadType .* is unknown"):
            verify_envelope(json.dumps(envelope).encode(), registry)


def test_an_event_signed_in_another_name_is_refused(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    """An operator may sign a kill, but only as itself: the record must not say that
    someone else killed something."""
    kill = replace(make_event(actor="host"), kind=EventKind.KILLED, reason="by-hand")
    with pytest.raises(SignatureError, match="actor must be its signer"):
        admit(sign_fact(kill, keys["maintainer"]), registry)
    admitted = admit(sign_fact(replace(kill, actor="maintainer"), keys["maintainer"]), registry)
    assert admitted.fact.actor == "maintainer"
