"""DSSE envelopes signed with Ed25519.

An envelope is ``{"payload": b64, "payloadType": t, "signatures": [{"keyid", "sig"}]}``
and the signature covers ``PAE(t, payload) = "DSSEv1" SP len(t) SP t SP len(body) SP body``.
Verification works on the exact bytes received: the payload is decoded from base64 and
checked as it is, never re-serialised first. ``keyid`` only says which registered key to
try; the identity of a signer is the key whose signature verified.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Final

from agora.core import ed25519
from agora.core.envelope import (
    PAYLOAD_TYPES,
    Act,
    Fact,
    decode_fact,
    parse_json,
    payload_type_of,
    unknown_payload_type,
)
from agora.core.errors import (
    MalformedEnvelope,
    PayloadTooLarge,
    SignatureError,
    UnknownKey,
    shown,
)
from agora.core.keys import Identity, KeyRegistry, SigningKey

MAX_ENVELOPE_BYTES: Final = 128 * 1024
ED25519_SIGNATURE_BYTES: Final = ed25519.SIGNATURE_BYTES
_ENVELOPE_KEYS: Final = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_KEYS: Final = frozenset({"keyid", "sig"})


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(body), body)


def sign_body(body: bytes, payload_type: str, key: SigningKey) -> bytes:
    """A compact DSSE envelope (JSON bytes) over ``body``, signed by ``key``.

    Raises :class:`PayloadTooLarge` rather than sign an envelope that
    :func:`read_envelope` would refuse."""
    signature = key.sign(pae(payload_type, body))
    envelope = {
        "payload": base64.b64encode(body).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(signature).decode()}],
    }
    data = json.dumps(envelope, separators=(",", ":")).encode()
    if len(data) > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"the signed envelope would be {len(data)} bytes: the limit is "
            f"{MAX_ENVELOPE_BYTES} bytes"
        )
    return data


def sign_fact(fact: Fact, key: SigningKey) -> bytes:
    return sign_body(fact.encode(), payload_type_of(fact), key)


@dataclass(frozen=True, slots=True)
class Verified:
    """An envelope whose signature verified: what it says, and who said it."""

    fact: Fact
    signer: Identity
    payload_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Signed:
    """An envelope read and its key found; its signature not yet checked."""

    signer: Identity
    payload_type: str
    body: bytes
    signature: bytes

    def covered(self) -> bytes:
        """The bytes the signature must cover."""
        return pae(self.payload_type, self.body)


def verify_envelope(data: bytes, registry: KeyRegistry) -> Verified:
    """Check one envelope's signature against the registry and decode its fact.

    Raises :class:`MalformedEnvelope`, :class:`PayloadTooLarge`, :class:`UnknownKey` or
    :class:`SignatureError`. An act's ``sender`` must be the identity that signed it.
    """
    signed = read_envelope(data, registry)
    check_signature(signed)
    return accept_signed(signed)


def verify_parsed(envelope: object, registry: KeyRegistry, *, entry: int | None = None) -> Verified:
    """:func:`verify_envelope` for an envelope already parsed from JSON; as the log's
    entry ``entry``, if given (a key since retired is valid for the entries it signed)."""
    signed = read_parsed(envelope, registry, entry=entry)
    check_signature(signed)
    return accept_signed(signed)


def read_envelope(data: bytes, registry: KeyRegistry) -> Signed:
    """The first step of :func:`verify_envelope`: parse the envelope and find its key."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"envelope is {len(data)} bytes: the limit is {MAX_ENVELOPE_BYTES} bytes"
        )
    if b"\n" in data or b"\r" in data:
        raise MalformedEnvelope("envelope spans more than one line: expected compact JSON")
    # as strictly as the fact log and `agora verify` read it: no key twice, UTF-8 only
    return read_parsed(parse_json(data, what="envelope"), registry)


def read_parsed(envelope: object, registry: KeyRegistry, *, entry: int | None = None) -> Signed:
    """:func:`read_envelope` for an envelope already parsed from JSON. A key since
    retired is found only for a log entry it was valid for (``entry``, as ``agora
    verify`` reads the log): whatever arrives now must carry a key in use."""
    payload_type, body, keyid, signature = _unpack(envelope)
    signer = registry.by_keyid(keyid)
    if signer is None:
        signer = _retired_signer(registry, keyid, entry)
    return Signed(signer, payload_type, body, signature)


def _retired_signer(registry: KeyRegistry, keyid: str, entry: int | None) -> Identity:
    found = registry.retired_key(keyid)
    if found is None:
        raise UnknownKey(f"envelope is signed with key id {shown(keyid)}, which no identity holds")
    identity, retired = found
    if entry is None or entry > retired.last_entry:
        where = "" if entry is None else f" (this is entry {entry})"
        raise UnknownKey(
            f"envelope is signed with a retired key of {identity.name!r}, valid for the "
            f"log's entries up to {retired.last_entry} only{where}"
        )
    return identity.as_retired(retired)


def check_signature(signed: Signed) -> None:
    """The second step: the Ed25519 check (one call into libsodium)."""
    if not ed25519.verifies(signed.signer.public_key, signed.signature, signed.covered()):
        raise bad_signature(signed)


def bad_signature(signed: Signed) -> SignatureError:
    return SignatureError(
        f"signature by {signed.signer.name!r} does not verify over this envelope's payload"
    )


def accept_signed(signed: Signed) -> Verified:
    """The last step, once the signature verified: decode the fact; an act's sender
    must be its signer."""
    fact = decode_fact(signed.payload_type, signed.body)
    if isinstance(fact, Act) and fact.sender != signed.signer.name:
        raise SignatureError(
            f"act sender {fact.sender!r} is not its signer {signed.signer.name!r}: "
            "a sender can only sign for itself"
        )
    return Verified(
        fact=fact, signer=signed.signer, payload_type=signed.payload_type, body=signed.body
    )


def _unpack(envelope: object) -> tuple[str, bytes, str, bytes]:
    if not isinstance(envelope, dict) or envelope.keys() != _ENVELOPE_KEYS:
        raise MalformedEnvelope(
            "envelope must be a JSON object with exactly payload, payloadType and signatures"
        )
    payload_type = envelope["payloadType"]
    if not isinstance(payload_type, str):
        raise MalformedEnvelope(f"payloadType must be a string, got {shown(payload_type)}")
    if payload_type not in PAYLOAD_TYPES:  # refused before its bytes are signed over
        raise unknown_payload_type(payload_type)
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise MalformedEnvelope("signatures must be a list of exactly one signature")
    entry = signatures[0]
    if not isinstance(entry, dict) or entry.keys() != _SIGNATURE_KEYS:
        raise MalformedEnvelope("a signature must be an object with exactly keyid and sig")
    keyid = entry["keyid"]
    if not isinstance(keyid, str):
        raise MalformedEnvelope(f"keyid must be a string, got {shown(keyid)}")
    body = _b64(envelope["payload"], "payload")
    check_payload_size(body)
    signature = _b64(entry["sig"], "sig")
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise SignatureError(
            f"sig is {len(signature)} bytes: an Ed25519 signature is {ED25519_SIGNATURE_BYTES}"
        )
    return payload_type, body, keyid, signature


def check_payload_size(body: bytes) -> None:
    if len(body) > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"envelope payload is {len(body)} bytes: the limit is {MAX_ENVELOPE_BYTES} bytes"
        )


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEnvelope(f"{name} must be a base64 string, got {shown(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEnvelope(f"{name} is not valid base64: {exc}") from exc
