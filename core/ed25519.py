"""Ed25519 signatures, made and checked by libsodium.

Key files are read and written with ``cryptography`` (PKCS#8 PEM); the signing and
checking itself goes to libsodium through PyNaCl, which does both in about half the
time OpenSSL takes on the same machine (``bench/bench_core.py`` prints both). Ed25519
signatures are deterministic, so either library makes the same bytes for the same key
and message. libsodium's check is the stricter one: besides the equation it refuses
public keys and ``R`` points of small order and non-canonical encodings, which an
honest signer never produces. OpenSSL accepts, for the identity point as public key,
one fixed signature on every message; libsodium does not.
"""

from __future__ import annotations

from typing import Final

from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

PUBLIC_KEY_BYTES: Final = 32
SEED_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64


def secret_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, libsodium's 64-byte secret key) for a 32-byte private seed."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, not {len(seed)}")
    return crypto_sign_seed_keypair(seed)


def sign(secret: bytes, message: bytes) -> bytes:
    """The 64-byte signature of ``message`` by libsodium secret key ``secret``."""
    return crypto_sign(message, secret)[:SIGNATURE_BYTES]


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` by ``public_key`` covers ``message``: False for any key or
    signature that is not of Ed25519's size or not valid, never an exception."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except BadSignatureError:
        return False
    return True
