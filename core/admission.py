"""Who may say what: the rule every fact must pass to be delivered or recorded.

The same rule runs when the host screens a message before delivery, when the recorder
appends to the fact log, and when ``agora verify`` checks the log, so nothing can be
recorded that verification would later refuse, and nothing refused is ever delivered.

- An act's sender (its signer) must be granted the act's channel.
- An event is recorded by the host or the bridge; an operator's key may also sign the
  two out-of-band control events, ``killed`` and ``resumed``. An event's actor is its
  signer: no one signs an event in another's name.
"""

from __future__ import annotations

from typing import Final

from agora.core.checkpoint import CHECKPOINT_SIGNER_ROLES
from agora.core.envelope import Act, EventKind, Fact
from agora.core.errors import SignatureError
from agora.core.keys import Identity, KeyRegistry, Role
from agora.core.signing import Verified, verify_envelope

CONTROL_EVENT_KINDS: Final = frozenset({EventKind.KILLED, EventKind.RESUMED})
CONTROL_SIGNER_ROLES: Final = CHECKPOINT_SIGNER_ROLES | {Role.OPERATOR}


def check_signer_may_say(signer: Identity, fact: Fact) -> None:
    """Raise :class:`SignatureError` when ``signer`` may not have said ``fact``."""
    if isinstance(fact, Act):
        if not signer.may_use(fact.channel):
            raise SignatureError(f"sender {signer.name!r} is not granted channel {fact.channel!r}")
        return
    if fact.actor != signer.name:
        raise SignatureError(
            f"{fact.kind.value} event by {fact.actor!r} signed by {signer.name!r}: an "
            "event's actor must be its signer"
        )
    allowed = CONTROL_SIGNER_ROLES if fact.kind in CONTROL_EVENT_KINDS else CHECKPOINT_SIGNER_ROLES
    if signer.role not in allowed:
        raise SignatureError(
            f"{fact.kind.value} event signed by {signer.name!r} ({signer.role.value}): only "
            f"{', '.join(sorted(r.value for r in allowed))} identities record it"
        )


def admit(data: bytes, registry: KeyRegistry, *, channel: str | None = None) -> Verified:
    """Verify an envelope and the signer's right to say it.

    ``channel`` is the channel the envelope arrived on, or None for an event subject:
    an act must name the channel it was published to (so a signed act cannot be
    replayed onto another), and events never travel on channels.
    Raises an :class:`~agora.core.errors.InputError` naming what is wrong.
    """
    return admit_verified(verify_envelope(data, registry), channel=channel)


def admit_verified(verified: Verified, *, channel: str | None) -> Verified:
    """:func:`admit` for an envelope whose signature already verified."""
    check_signer_may_say(verified.signer, verified.fact)
    check_arrival(verified.fact, channel)
    return verified


def check_arrival(fact: Fact, channel: str | None) -> None:
    """An act must arrive on its own channel, and only acts arrive on channels."""
    if channel is None:
        if isinstance(fact, Act):
            raise SignatureError(f"act {fact.id!r} was published outside its channel")
        return
    if not isinstance(fact, Act):
        raise SignatureError(f"an event was published on channel {channel!r}: only acts are")
    if fact.channel != channel:
        raise SignatureError(
            f"act {fact.id!r} names channel {fact.channel!r} but was published on {channel!r}"
        )
