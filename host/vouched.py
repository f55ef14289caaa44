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
from agora.core.envelope import Act, Fact
from agora.core.keys import KeyRegistry

VOUCHED_MAX: Final = 65536
GROUNDED_MAX: Final = 65536


class Vouched:
    """A bounded map from envelope digest to the fact it carries and who signed it."""

    def __init__(self, registry: KeyRegistry, limit: int = VOUCHED_MAX) -> None:
        self._registry = registry
        self._facts: OrderedDict[bytes, tuple[Fact, str]] = OrderedDict()
        self._limit = limit
        # act id -> envelope digest, for acts whose reply chain this process has seen
        self._grounded: OrderedDict[str, bytes] = OrderedDict()

    def add(self, envelope: bytes, fact: Fact, signer: str) -> None:
        self._remember(hashlib.sha256(envelope).digest(), (fact, signer))

    def grounded(self, act_id: str) -> bool:
        """Whether the recorder will take this act, as far as this process can tell.

        An act is grounded when this process verified or signed it, one envelope only
        carries its id, and it answers nothing or a grounded act. One ``delivered`` or
        ``refused`` event may cover many grounded acts; an act that is not (a reply to
        something never seen here, an id with two envelopes) gets an event of its own,
        so that if the recorder refuses it, no other act's event goes with it.
        """
        return act_id in self._grounded

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
        fact = known[0]
        if not isinstance(fact, Act):
            return
        seen = self._grounded.get(fact.id)
        if seen is not None:
            if seen != digest:  # a second envelope under one id: the recorder keeps one
                del self._grounded[fact.id]
            return
        if fact.in_reply_to is None or fact.in_reply_to in self._grounded:
            self._grounded[fact.id] = digest
            if len(self._grounded) > GROUNDED_MAX:
                self._grounded.popitem(last=False)
