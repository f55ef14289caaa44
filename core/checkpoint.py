"""Log checkpoints as C2SP signed notes.

A checkpoint body is three lines, ``origin``, ``tree size`` and the base64 root hash,
followed by a blank line and one signature line per signer::

    agora/facts
    42
    qK0...=

    — agora-host AbCd...

Each signature is ``base64(key hash (4 bytes) || Ed25519 signature over the body)``,
where the key hash is the first four bytes of ``SHA-256(name || "\\n" || 0x01 || key)``,
as in the C2SP signed-note spec that Go's checksum database and Rekor v2 use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from agora.core import ed25519
from agora.core.errors import MalformedEnvelope, SignatureError, UnknownKey, shown
from agora.core.keys import KeyRegistry, Role, SigningKey
from agora.core.merkle import HASH_BYTES

SIGNATURE_PREFIX: Final = "\u2014 "
ED25519_NOTE_ALGORITHM: Final = b"\x01"
_ORIGIN_RE: Final = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,255}")
CHECKPOINT_SIGNER_ROLES: Final = frozenset({Role.HOST, Role.BRIDGE})
MAX_SIZE_DIGITS: Final = 20  # a tree of up to 2**64 entries


def note_key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_NOTE_ALGORITHM + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> bytes:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n".encode()

    def sign(self, key: SigningKey) -> bytes:
        """The whole signed note, ready to be written to a file."""
        body = self.body()
        signature = note_key_hash(key.name, key.public_key) + key.sign(body)
        line = f"{SIGNATURE_PREFIX}{key.name} {base64.b64encode(signature).decode()}\n"
        return body + b"\n" + line.encode()


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signer: str


def open_checkpoint(note: bytes, registry: KeyRegistry) -> SignedCheckpoint:
    """Parse a signed note and verify it was signed by a host or bridge identity.

    Signature lines from keys the registry does not hold are skipped, as the signed-note
    spec asks; at least one must come from a known host or bridge key and verify.
    """
    try:
        text = note.decode()
    except UnicodeDecodeError as exc:
        raise MalformedEnvelope("checkpoint is not UTF-8") from exc
    body, separator, signature_block = text.partition("\n\n")
    if not separator or not signature_block.endswith("\n"):
        raise MalformedEnvelope(
            "checkpoint must be a body, a blank line, then signature lines ending in a newline"
        )
    checkpoint = _parse_body(body)
    signed_text = (body + "\n").encode()
    for line in signature_block[:-1].split("\n"):
        signer = _verified_signer(line, signed_text, registry, checkpoint.size)
        if signer is not None:
            return SignedCheckpoint(checkpoint, signer)
    raise UnknownKey("checkpoint carries no signature from a host or bridge key in the registry")


def _parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 3:
        raise MalformedEnvelope("checkpoint body must have an origin, a size and a root hash")
    origin, size_text, root_text = lines[:3]
    if _ORIGIN_RE.fullmatch(origin) is None:
        raise MalformedEnvelope(f"checkpoint origin {shown(origin)} is not printable ASCII")
    decimal = size_text.isascii() and size_text.isdigit() and len(size_text) <= MAX_SIZE_DIGITS
    if not decimal or (size_text != "0" and size_text.startswith("0")):
        raise MalformedEnvelope(
            f"checkpoint size {shown(size_text[:40])} is not a decimal number of at most "
            f"{MAX_SIZE_DIGITS} digits 0-9"
        )
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEnvelope(f"checkpoint root {shown(root_text)} is not base64") from exc
    if len(root) != HASH_BYTES:
        raise MalformedEnvelope(f"checkpoint root is {len(root)} bytes, expected {HASH_BYTES}")
    return Checkpoint(origin=origin, size=int(size_text), root=root)


def _verified_signer(line: str, signed_text: bytes, registry: KeyRegistry, size: int) -> str | None:
    """The signer's name if ``line`` is its signature over the note; None if it is by a
    key the registry does not hold for a checkpoint signer (a retired key holds for a
    checkpoint over no more entries than it signed)."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedEnvelope(f"checkpoint signature line {shown(line)} must start with '—'")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if name not in registry:
        return None
    identity = registry.get(name)
    if identity.role not in CHECKPOINT_SIGNER_ROLES:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEnvelope(f"checkpoint signature by {name!r} is not base64") from exc
    keys = [
        identity.public_key,
        *(r.public_key for r in identity.retired if size <= r.last_entry + 1),
    ]
    public_key = next((k for k in keys if raw[:4] == note_key_hash(name, k)), None)
    if public_key is None:
        return None
    if not ed25519.verifies(public_key, raw[4:], signed_text):
        raise SignatureError(f"checkpoint signature by {name!r} does not verify")
    return name
