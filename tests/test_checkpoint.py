"""Checkpoints as C2SP signed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest

from agora.core.checkpoint import Checkpoint, note_key_hash, open_checkpoint
from agora.core.errors import MalformedEnvelope, SignatureError, UnknownKey
from agora.core.keys import KeyRegistry, SigningKey

ROOT = hashlib.sha256(b"root").digest()
ROOT_TEXT = base64.b64encode(ROOT).decode()


def test_note_has_the_signed_note_shape(keys: dict[str, SigningKey]) -> None:
    note = Checkpoint("agora/facts", 42, ROOT).sign(keys["host"]).decode()
    body, signatures = note.split("\n\n")
    assert body.split("\n") == ["agora/facts", "42", base64.b64encode(ROOT).decode()]
    name, encoded = signatures.removeprefix("\u2014 ").rstrip("\n").split(" ")
    raw = base64.b64decode(encoded)
    assert name == "host"
    assert raw[:4] == note_key_hash("host", keys["host"].public_key)
    assert len(raw) == 4 + 64


def test_signed_checkpoint_opens(keys: dict[str, SigningKey], registry: KeyRegistry) -> None:
    checkpoint = Checkpoint("agora/facts", 7, ROOT)
    signed = open_checkpoint(checkpoint.sign(keys["host"]), registry)
    assert signed.checkpoint == checkpoint
    assert signed.signer == "host"


def test_changed_size_breaks_the_signature(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    note = Checkpoint("agora/facts", 7, ROOT).sign(keys["host"])
    with pytest.raises(SignatureError, match="does not verify"):
        open_checkpoint(note.replace(b"\n7\n", b"\n8\n", 1), registry)


def test_checkpoint_by_unknown_key_is_refused(registry: KeyRegistry) -> None:
    forger = SigningKey.generate("host")  # the right name, the wrong key
    with pytest.raises(UnknownKey):
        open_checkpoint(Checkpoint("agora/facts", 7, ROOT).sign(forger), registry)
    stranger = SigningKey.generate("stranger")
    with pytest.raises(UnknownKey, match="no signature from a host or bridge key"):
        open_checkpoint(Checkpoint("agora/facts", 7, ROOT).sign(stranger), registry)


def test_an_agent_cannot_sign_checkpoints(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with pytest.raises(UnknownKey):
        open_checkpoint(Checkpoint("agora/facts", 7, ROOT).sign(keys["synth-agent"]), registry)


@pytest.mark.parametrize(
    "note",
    [
        b"agora/facts\n7\n",
        b"agora/facts\n07\nAAAA\n\n\xe2\x80\x94 host AAAA\n",
        b"agora/facts\nseven\nAAAA\n\n\xe2\x80\x94 host AAAA\n",
        b"agora/facts\n7\nnot base64!\n\n\xe2\x80\x94 host AAAA\n",
        b"agora/facts\n7\nAAAA\n\n\xe2\x80\x94 host AAAA\n",
        b"\xff\n7\n",
        # digits Python reads as digits, and more than a size can have
        f"agora/facts\n\u00b2\n{ROOT_TEXT}\n\n\u2014 host AAAA\n".encode(),
        f"agora/facts\n\u0667\n{ROOT_TEXT}\n\n\u2014 host AAAA\n".encode(),
        f"agora/facts\n{'9' * 5000}\n{ROOT_TEXT}\n\n\u2014 host AAAA\n".encode(),
        f"agora/facts\n{'1' * 21}\n{ROOT_TEXT}\n\n\u2014 host AAAA\n".encode(),
    ],
)
def test_malformed_notes_are_refused(note: bytes, registry: KeyRegistry) -> None:
    with pytest.raises(MalformedEnvelope):
        open_checkpoint(note, registry)
