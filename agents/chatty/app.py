"""chatty: answers every message it is handed with an ``inform`` on the same channel.

The spike's chatty pair (``synth-agent`` and ``relay-agent``) run this component: each
answers the other, so their exchange stops only when the host's hop budget runs out.
Stateless; no settings.
"""

from __future__ import annotations

import wit_world
from wit_world.imports.types import Context, Message, Outcome, Performative

MAX_PAYLOAD_CHARS = 200


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx: Context, state: bytes, inbox: list[Message]) -> Outcome:
        outbox = [answer(ctx, message) for message in inbox if message.hops > 0]
        return Outcome(outbox=outbox, state=state, wake_at_ms=None)


def answer(ctx: Context, message: Message) -> Message:
    text = f"{ctx.agent} heard {message.sender}: {message.payload}"
    return Message(
        id="",
        conversation_id=message.conversation_id,
        in_reply_to=message.id,
        sender=ctx.agent,
        channel=message.channel,
        act=Performative.INFORM,
        payload=text[:MAX_PAYLOAD_CHARS],
        hops=0,
    )
