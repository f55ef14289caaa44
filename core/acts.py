"""The speech acts (the 22 FIPA ACL performatives) and the rules for channel and identity names."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

from agora.core.errors import InvalidAct, InvalidChannel, InvalidName, shown


class Performative(StrEnum):
    """The FIPA ACL communicative acts, spelled as in the WIT contract."""

    ACCEPT_PROPOSAL = "accept-proposal"
    AGREE = "agree"
    CANCEL = "cancel"
    CFP = "cfp"
    CONFIRM = "confirm"
    DISCONFIRM = "disconfirm"
    FAILURE = "failure"
    INFORM = "inform"
    INFORM_IF = "inform-if"
    INFORM_REF = "inform-ref"
    NOT_UNDERSTOOD = "not-understood"
    PROPAGATE = "propagate"
    PROPOSE = "propose"
    PROXY = "proxy"
    QUERY_IF = "query-if"
    QUERY_REF = "query-ref"
    REFUSE = "refuse"
    REJECT_PROPOSAL = "reject-proposal"
    REQUEST = "request"
    REQUEST_WHEN = "request-when"
    REQUEST_WHENEVER = "request-whenever"
    SUBSCRIBE = "subscribe"


_ACTS_BY_NAME: Final = {p.value: p for p in Performative}


def parse_act(value: object) -> Performative:
    """The performative named by ``value``, or :class:`InvalidAct`."""
    act = _ACTS_BY_NAME.get(value) if isinstance(value, str) else None
    if act is None:
        raise InvalidAct(
            f"act {shown(value)} is not a FIPA performative: expected one of "
            f"{', '.join(sorted(_ACTS_BY_NAME))}"
        )
    return act


MAX_CHANNEL_CHARS: Final = 128
MAX_NAME_CHARS: Final = 64
_CHANNEL_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_channel(value: object, *, field: str = "channel") -> str:
    """``value`` if it is a valid channel name, else :class:`InvalidChannel`.

    Channel names become one token of a NATS subject, so only letters, digits, ``-``
    and ``_`` are allowed: ``.``, ``*``, ``>``, spaces and path characters would let a
    name reach other subjects.
    """
    if not isinstance(value, str) or _CHANNEL_RE.fullmatch(value) is None:
        raise InvalidChannel(
            f"{field} {shown(value)} is not allowed: only letters, digits, '-' and '_' "
            f"(1 to {MAX_CHANNEL_CHARS} characters)"
        )
    return value


def check_name(value: object, *, field: str = "name") -> str:
    """``value`` if it is a valid identity name or message id, else :class:`InvalidName`.

    Agent, key and message names follow the channel alphabet (they too end up in NATS
    subjects and consumer names) and are at most 64 characters.
    """
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise InvalidName(
            f"{field} {shown(value)} is not allowed: only letters, digits, '-' and '_' "
            f"(1 to {MAX_NAME_CHARS} characters)"
        )
    return value
