"""What the host reads of an agent's ``handle`` export, checked when the agent is loaded.

``wit/agent.wit`` is the contract, and componentize-py builds every agent against it;
but a component can be made otherwise (by hand, in WAT), with a ``handle`` of another
shape. One whose parameters the host cannot fill, or whose outcome it cannot read, is
refused when the agent starts (a fault, like any other: the agent is quarantined), not
found out in the middle of a batch: three parameters, and an outcome record of an
``outbox`` of messages (the WIT's fields, ``act`` one of the FIPA acts), a ``state``
and a ``wake-at-ms``.
"""

from __future__ import annotations

from typing import Final

from wasmtime.component import EnumType, FuncType, ListType, RecordType, ValType

from agora.core.acts import Performative

PARAMETERS: Final = 3  # the context, the saved state, the inbox
OUTCOME_FIELDS: Final = ("outbox", "state", "wake-at-ms")
MESSAGE_FIELDS: Final = (
    "id",
    "conversation-id",
    "in-reply-to",
    "sender",
    "channel",
    "act",
    "payload",
    "hops",
)
ACTS: Final = tuple(p.value for p in Performative)


def contract_problem(handle: FuncType) -> str | None:
    """What in ``handle``'s type the host could not work with, or None."""
    if len(handle.params) != PARAMETERS:
        return f"its handle takes {len(handle.params)} parameters; the contract has {PARAMETERS}"
    outcome = handle.result
    if not isinstance(outcome, RecordType) or _names(outcome) != OUTCOME_FIELDS:
        return f"its handle returns {_shown(outcome)}; the contract has a record {OUTCOME_FIELDS}"
    outbox = dict(outcome.fields)["outbox"]
    message = outbox.element if isinstance(outbox, ListType) else None
    if not isinstance(message, RecordType) or _names(message) != MESSAGE_FIELDS:
        return f"its outbox is {_shown(outbox)}; the contract has a list of {MESSAGE_FIELDS}"
    act = dict(message.fields)["act"]
    if not isinstance(act, EnumType) or tuple(act.names) != ACTS:
        return f"its messages' act is {_shown(act)}; the contract has an enum of the FIPA acts"
    return None


def _names(record: RecordType) -> tuple[str, ...]:
    return tuple(name for name, _ in record.fields)


def _shown(ty: ValType | None) -> str:
    if isinstance(ty, RecordType):
        return f"a record {_names(ty)}"
    if isinstance(ty, EnumType):
        return f"an enum of {len(ty.names)} cases"
    return "nothing" if ty is None else f"a {type(ty).__name__}"
