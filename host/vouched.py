"""Envelopes this process has already verified or signed, so it checks each only once.

Several agents on one channel each receive the same envelope, and the recorder records
it too; one Ed25519 verification is enough for all of them within a process. Entries are
keyed by the SHA-256 of the exact bytes, so a changed byte is a different envelope; the
subject an envelope arrived on is checked every time.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

from agora.core.admission import admit, check_arrival
from agora.core.envelope import Fact
from agora.core.keys import KeyRegistry

VOUCHED_MAX: Final = 65536


class Vouched:
    """A bounded map from envelope digest to the fact it carries and who signed it."""

    def __init__(self, registry: KeyRegistry, limit: int = VOUCHED_MAX) -> None:
        self._registry = registry
        self._facts: OrderedDict[bytes, tuple[Fact, str]] = OrderedDict()
        self._limit = limit

    def add(self, envelope: bytes, fact: Fact, signer: str) -> None:
        self._remember(hashlib.sha256(envelope).digest(), (fact, signer))

    def admit(self, envelope: bytes, *, channel: str | None) -> tuple[Fact, str]:
        """The fact and its signer; verified with :func:`admit` unless already known."""
        digest = hashlib.sha256(envelope).digest()
        known = self._facts.get(digest)
        if known is None:
            verified = admit(envelope, self._registry, channel=channel)
            known = (verified.fact, verified.signer.name)
            self._remember(digest, known)
        else:
            check_arrival(known[0], channel)
        return known

    def _remember(self, digest: bytes, known: tuple[Fact, str]) -> None:
        self._facts[digest] = known
        if len(self._facts) > self._limit:
            self._facts.popitem(last=False)
