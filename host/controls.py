"""The cross-talk controls, as pure decisions over plain data.

Each question the host asks before handing a message to an agent, or before publishing
what an agent emitted, is answered here without I/O, so the same rules run in the live
host and in the spike's reference simulation (:mod:`agora.host.reference`).

Delivery, in this order (the first that applies wins):

1. scope: a channel the agent was not granted is never delivered (structural);
2. self-echo: a message whose *signed* sender is the agent is never delivered to it,
   on any channel; nothing can turn this off;
3. idempotency: a message the agent already processed is skipped;
4. hop budget: a message with no hops left is recorded but delivered to no agent.

A message that passes is then checked as a copy (:func:`screen_replay`): every
publisher sends a fact under its own id as ``Nats-Msg-Id``, so the server drops a
second publish of it within its duplicate window; a copy published under another id,
or stored too long after it was signed for that window to cover it, is a replay.

Emission (:func:`screen_emit`), in this order: a sender other than the agent itself
is a forgery; a malformed channel or conversation id is refused, then a channel the
agent was not granted, then an oversized payload, then a reply to a message the agent
was never handed or in another conversation than that message's. The host, not the
agent, sets the hop budget: one less than what the message draws on (the message it
answers, or for a message that answers none, the conversation, whose budget is the
newest message's handed in it). Each message sent spends one hop of that budget, so one
message handed to an agent with h hops can beget at most h replies and h messages more
in its conversation, each with fewer hops than it had, and a spent budget begets none:
no agent keeps a conversation going on its own.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agora.core.acts import check_channel, check_name
from agora.core.envelope import check_payload
from agora.core.errors import InputError, shown


class Verdict(StrEnum):
    DELIVER = "deliver"
    SCOPE_BLOCKED = "scope-blocked"
    SELF_ECHO = "self-echo"
    DUPLICATE = "duplicate"
    NO_HOPS = "no-hops"
    REPLAYED = "replayed"
    STALE = "stale"


def screen_delivery(
    *,
    agent: str,
    granted: Container[str],
    channel: str,
    signed_sender: str,
    message_id: str,
    hops: int,
    processed: Container[str],
) -> Verdict:
    """Whether ``agent`` may be handed this message, and if not, which control says no."""
    if channel not in granted:
        return Verdict.SCOPE_BLOCKED
    if signed_sender == agent:
        return Verdict.SELF_ECHO
    if message_id in processed:
        return Verdict.DUPLICATE
    if hops <= 0:
        return Verdict.NO_HOPS
    return Verdict.DELIVER


def screen_replay(
    *,
    fact_id: str,
    msg_id: str | None,
    signed_ms: int,
    stored_ms: int,
    fresh_for_ms: int,
    window_ms: int,
) -> Verdict:
    """Whether a message is the one its signer published, or a copy published again.

    ``msg_id`` is the ``Nats-Msg-Id`` it was published under, ``signed_ms`` the time in
    its signed body and ``stored_ms`` when the stream stored it. A message is fresh from
    ``window_ms - fresh_for_ms`` before its signed time (a signer's clock a little ahead
    of the stream's) to ``fresh_for_ms`` after it: whenever a fresh copy is stored, the
    first publish under the same id is less than ``window_ms`` (the stream's duplicate
    window) before it, and the server drops the copy.
    """
    if msg_id != fact_id:
        return Verdict.REPLAYED
    if not -(window_ms - fresh_for_ms) <= stored_ms - signed_ms <= fresh_for_ms:
        return Verdict.STALE
    return Verdict.DELIVER


def reply_hops(parent_hops: int) -> int:
    """The hop budget of a reply: one less than its parent's, never more, never below 0."""
    return max(parent_hops - 1, 0)


class EmitVerdict(StrEnum):
    """What the host decides about one message an agent asked to send."""

    EMIT = "emit"
    FORGED_SENDER = "forged-sender"
    MALFORMED = "emit-malformed"
    UNGRANTED = "emit-ungranted"
    TOO_LARGE = "payload-too-large"
    UNKNOWN_REPLY = "unknown-reply"
    WRONG_CONVERSATION = "wrong-conversation"
    NO_PARENT = "no-parent"
    SPENT = "hops-spent"


@dataclass(frozen=True, slots=True)
class Handed:
    """What an agent may still draw on from a message it was handed."""

    hops: int  # the budget left to spend on replies to it
    conversation: str


@dataclass(frozen=True, slots=True)
class EmitDecision:
    verdict: EmitVerdict
    hops: int = 0  # the emitted message's budget, and what its source has left after it
    detail: str = ""
    from_conversation: bool = False  # the source is the conversation, not the parent


def screen_emit(  # noqa: PLR0911 - one return per control, in order
    *,
    agent: str,
    granted: Container[str],
    sender: str,
    channel: str,
    conversation: str,
    in_reply_to: str | None,
    payload: str,
    parents: Mapping[str, Handed],
    conversations: Mapping[str, int],
) -> EmitDecision:
    """Whether the host publishes what ``agent`` emitted, and with which hop budget.

    ``parents`` maps the ids of messages the agent was handed to what it may still draw
    on them; ``conversations`` maps conversations it took part in to the budget left
    there (that of the last message it was handed, less what it spent since). A reply
    gets one hop less than its parent has left; a message that answers none (a timer's
    output), or answers the message that opened the conversation once the host no
    longer holds its budget (a vote's decision, long after the request: only the last
    parents are kept), one less than its conversation has left. The caller spends that
    hop: the source is left with the emitted message's budget. A message in no conversation the
    agent was handed is refused, so an agent can never start traffic out of nothing,
    raise a budget, or spend one twice.
    """
    if sender not in ("", agent):
        return EmitDecision(EmitVerdict.FORGED_SENDER, detail=f"sender {shown(sender)}")
    try:
        check_channel(channel)
        check_name(conversation, field="conversation-id")
    except InputError as exc:
        return EmitDecision(EmitVerdict.MALFORMED, detail=str(exc))
    if channel not in granted:
        return EmitDecision(EmitVerdict.UNGRANTED, detail=f"channel {channel!r} is not granted")
    try:
        check_payload(payload)
    except InputError as exc:
        return EmitDecision(EmitVerdict.TOO_LARGE, detail=str(exc))
    parent = None if in_reply_to is None else parents.get(in_reply_to)
    opener = in_reply_to == conversation and conversation in conversations
    if in_reply_to is not None and parent is None and not opener:
        return EmitDecision(
            EmitVerdict.UNKNOWN_REPLY,
            detail=f"in-reply-to {shown(in_reply_to)} is no message the agent was handed",
        )
    if parent is not None:
        if parent.conversation not in ("", conversation):  # "": not known (an old record)
            return EmitDecision(
                EmitVerdict.WRONG_CONVERSATION,
                detail=f"a reply to {in_reply_to} belongs to conversation "
                f"{parent.conversation!r}, not {conversation!r}",
            )
        budget, source = parent.hops, f"the message it answers ({in_reply_to})"
    else:
        left = conversations.get(conversation)
        if left is None:
            return EmitDecision(
                EmitVerdict.NO_PARENT,
                detail=f"conversation {conversation!r} is not one the agent was handed a "
                "message in",
            )
        budget, source = left, f"conversation {conversation!r}"
    if budget <= 0:
        return EmitDecision(EmitVerdict.SPENT, detail=f"{source} has no hop budget left to spend")
    return EmitDecision(EmitVerdict.EMIT, hops=reply_hops(budget), from_conversation=parent is None)
