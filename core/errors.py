"""Every error agora raises on purpose.

::

    AgoraError                      anything agora refuses, with a message a user can act on
    ├── InputError                  bad input from a peer, a file or a user; nothing was changed
    │   ├── InvalidChannel          a channel name outside the allowed alphabet or length
    │   ├── InvalidName             an identity name or message id outside that alphabet
    │   ├── InvalidAct              an act that is not one of the 22 FIPA performatives
    │   ├── PayloadTooLarge         a payload or envelope over its size limit
    │   ├── MalformedEnvelope       bytes that are not a well-formed envelope or act
    │   ├── SignatureError          a signature that does not verify
    │   ├── UnknownKey              a key name or key id the registry does not hold
    │   └── ConfigError             a configuration or key-registry file that is wrong
    ├── ControlViolation            an agent broke one of the cross-talk controls
    ├── VerificationError           a fact log that does not verify (names the entry)
    └── InternalError               our own bug: an invariant that should always hold

Messages name the field, the value and the limit, so that whoever reads one knows what
to change. Values are shortened before they are shown, so a hostile input cannot flood
a log through an error message.
"""

from __future__ import annotations

import reprlib
from typing import Final

SHOWN_VALUE_CHARS: Final = 80


def shown(value: object) -> str:
    """``repr`` of a value, cut to a length that is safe to log. A container is shown by
    its first few items, levels deep (a YAML file's aliases can make one of a few
    lines hold a billion items), and an integer too long to write as its size."""
    if isinstance(value, int) and value.bit_length() > _LONGEST_SHOWN_INT_BITS:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value) if isinstance(value, str | bytes | int | float) else _SHORT.repr(value)
    if len(text) <= SHOWN_VALUE_CHARS:
        return text
    return f"{text[:SHOWN_VALUE_CHARS]}... ({len(text)} chars)"


_LONGEST_SHOWN_INT_BITS: Final = 1000
_SHORT: Final = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = 200


class AgoraError(Exception):
    """Root of every error agora raises on purpose."""


class InputError(AgoraError):
    """Bad input from a peer, a file or a user. Nothing was changed."""


class InvalidChannel(InputError):
    pass


class InvalidName(InputError):
    pass


class InvalidAct(InputError):
    pass


class PayloadTooLarge(InputError):
    pass


class MalformedEnvelope(InputError):
    pass


class SignatureError(InputError):
    pass


class UnknownKey(InputError):
    pass


class ConfigError(InputError):
    pass


class ControlViolation(AgoraError):
    """An agent broke one of the cross-talk controls."""


class VerificationError(AgoraError):
    """A fact log does not verify. ``index`` is the first bad entry, when there is one."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class InternalError(AgoraError):
    """An invariant that should always hold did not: a bug in agora."""
