"""voter: votes on its coordinator's proposals by looking for words in their topic.

On a ``propose`` from its coordinator (the sender the host verified; proposals from
anyone else are ignored) it reads the topic (the ``"topic"`` of a JSON payload, or the
payload itself when that is not JSON) and answers in the same conversation:

1. ``reject-proposal`` with payload ``veto: WORD`` if the topic holds a veto word;
2. else ``accept-proposal`` with payload ``approve: WORD`` if it holds an approve word;
3. else its default vote, with payload ``default``.

Words match case-insensitively anywhere in the topic, checked in the order they are
listed. It votes at most once per conversation (it remembers the last 64).

Settings: ``approve`` and ``veto`` (comma-separated words), ``default`` (``accept`` or
``reject``, also spelt ``approve`` and ``veto``, in any case; default ``reject``; any
other value is said in the host log and taken as ``reject``), ``coordinator`` (the agent
whose proposals it votes on; default ``coordinator``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

MAX_REMEMBERED = 64
# Parsing JSON nested about a thousand deep exhausts the wasm call stack, a trap no
# ``except`` can catch; a proposal holds one object and its topic (at most 200 characters).
MAX_BRACKETS = 256
DEFAULT_COORDINATOR = "coordinator"
CHOICES = {
    "accept": Performative.ACCEPT_PROPOSAL,
    "approve": Performative.ACCEPT_PROPOSAL,
    "reject": Performative.REJECT_PROPOSAL,
    "veto": Performative.REJECT_PROPOSAL,
}


@dataclass(frozen=True)
class Policy:
    coordinator: str
    approve: tuple[str, ...]
    veto: tuple[str, ...]
    default: Performative


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        policy = policy_from(dict(ctx.settings))
        voted: list[str] = json.loads(state) if state else []
        outbox: list[Message] = []
        for message in inbox:
            if message.act != Performative.PROPOSE or message.sender != policy.coordinator:
                continue
            if message.conversation_id in voted:
                continue
            act, reason = choose(policy, topic_of(message.payload))
            outbox.append(reply(ctx, message, act, reason))
            voted = [*voted, message.conversation_id][-MAX_REMEMBERED:]
        return Outcome(outbox=outbox, state=json.dumps(voted).encode(), wake_at_ms=None)


def policy_from(settings: dict[str, str]) -> Policy:
    text = settings.get("default", "reject")
    default = CHOICES.get(text.strip().casefold())
    if default is None:
        warn(f"setting 'default' must be 'accept' or 'reject', got {text!r}: using 'reject'")
        default = Performative.REJECT_PROPOSAL
    return Policy(
        coordinator=settings.get("coordinator", "").strip() or DEFAULT_COORDINATOR,
        approve=words(settings.get("approve", "")),
        veto=words(settings.get("veto", "")),
        default=default,
    )


def warn(text: str) -> None:
    print(text, file=sys.stderr)  # the host copies it into its log


def words(listing: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in listing.split(",") if word.strip())


def topic_of(payload: str) -> str:
    proposal = parsed(payload)
    if isinstance(proposal, dict) and isinstance(proposal.get("topic"), str):
        return proposal["topic"]
    return payload


def parsed(payload: str) -> object:
    """The JSON value of a payload; None if it is not JSON or too deeply nested to read."""
    if payload.count("[") + payload.count("{") > MAX_BRACKETS:
        return None
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def choose(policy: Policy, topic: str) -> tuple[Performative, str]:
    """The vote on a topic and the reason given with it."""
    text = topic.casefold()
    for word in policy.veto:
        if word.casefold() in text:
            return Performative.REJECT_PROPOSAL, f"veto: {word}"
    for word in policy.approve:
        if word.casefold() in text:
            return Performative.ACCEPT_PROPOSAL, f"approve: {word}"
    return policy.default, "default"


def reply(ctx: Context, message: Message, act: Performative, payload: str) -> Message:
    return Message(
        id="",
        conversation_id=message.conversation_id,
        in_reply_to=message.id,
        sender=ctx.agent,
        channel=message.channel,
        act=act,
        payload=payload,
        hops=0,
    )
