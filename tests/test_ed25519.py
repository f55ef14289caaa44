"""libsodium's Ed25519 against OpenSSL's (through ``cryptography``): the same
signatures, each library accepting the other's, and nothing but False for bad input."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agora.core import ed25519
from agora.core.envelope import ACT_PAYLOAD_TYPE
from agora.core.errors import SignatureError
from agora.core.keys import Identity, KeyRegistry, Role, SigningKey
from agora.core.signing import pae, verify_envelope
from agora.host.signature_helper import encode_request, serve
from tests.factories import make_act

# the identity point: a public key of small order, which libsodium refuses
SMALL_ORDER_KEY = b"\x01" + b"\x00" * 31


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2048))
def test_signatures_match_openssl_byte_for_byte(seed: bytes, message: bytes) -> None:
    openssl = Ed25519PrivateKey.from_private_bytes(seed)
    public, secret = ed25519.secret_from_seed(seed)
    raw_public = openssl.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public == raw_public
    signature = ed25519.sign(secret, message)
    assert signature == openssl.sign(message)
    openssl.public_key().verify(signature, message)  # raises if OpenSSL disagrees
    assert ed25519.verifies(public, openssl.sign(message), message)


def test_a_changed_message_key_or_signature_does_not_verify() -> None:
    key = SigningKey.generate("someone")
    other = SigningKey.generate("someone-else")
    message = b"DSSEv1 4 type 5 hello"
    signature = key.sign(message)
    assert ed25519.verifies(key.public_key, signature, message)
    assert not ed25519.verifies(key.public_key, signature, message + b"!")
    assert not ed25519.verifies(other.public_key, signature, message)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not ed25519.verifies(key.public_key, flipped, message)
    with pytest.raises(InvalidSignature):
        key.private_key.public_key().verify(flipped, message)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (b"", b"\x00" * 64),
        (b"\x00" * 31, b"\x00" * 64),
        (b"\x00" * 33, b"\x00" * 64),
        (os.urandom(32), b""),
        (os.urandom(32), b"\x00" * 63),
        (os.urandom(32), b"\x00" * 65),
        (SMALL_ORDER_KEY, b"\x01" + b"\x00" * 63),
        (b"\xff" * 32, os.urandom(64)),  # not a point at all
    ],
)
def test_bad_keys_and_signatures_are_false_not_errors(public_key: bytes, signature: bytes) -> None:
    assert ed25519.verifies(public_key, signature, b"message") is False


def test_a_seed_of_the_wrong_size_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="seed is 32 bytes, not 31"):
        ed25519.secret_from_seed(b"\x00" * 31)


def test_a_signing_key_never_shows_its_secret() -> None:
    key = SigningKey.generate("quiet")
    assert key._secret.hex() not in repr(key)
    assert "_secret" not in repr(key)


def test_a_small_order_key_cannot_vouch_for_any_message() -> None:
    # with the identity point as public key, R = identity and s = 0 satisfy the
    # equation for every message: OpenSSL accepts it, libsodium does not
    forged = b"\x01" + b"\x00" * 63
    Ed25519PublicKey.from_public_bytes(SMALL_ORDER_KEY).verify(forged, b"anything at all")
    assert not ed25519.verifies(SMALL_ORDER_KEY, forged, b"anything at all")


def test_envelopes_and_the_signature_helper_refuse_the_small_order_forgery() -> None:
    # an identity registered with a small-order key: OpenSSL would accept the fixed
    # signature on any envelope "by" it; every path through agora goes to libsodium
    forger = Identity("forger", Role.AGENT, SMALL_ORDER_KEY, frozenset({"build-coord"}))
    registry = KeyRegistry([forger])
    forged = b"\x01" + b"\x00" * 63
    act = make_act(sender="forger")
    envelope = json.dumps(
        {
            "payload": base64.b64encode(act.encode()).decode(),
            "payloadType": ACT_PAYLOAD_TYPE,
            "signatures": [{"keyid": forger.keyid, "sig": base64.b64encode(forged).decode()}],
        }
    ).encode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(envelope, registry)
    answers = io.BytesIO()
    request = encode_request(1, [(SMALL_ORDER_KEY, forged, pae(ACT_PAYLOAD_TYPE, act.encode()))])
    serve(io.BytesIO(request), answers)
    assert answers.getvalue() == b"\x00\x00\x00\x01\x00"
