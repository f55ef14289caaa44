"""The out-of-band control path: where kills, quarantines and resumes are written.

A JetStream key-value bucket, ``agora-control``, with one key per target: ``all``,
``agent.<name>`` or ``channel.<name>``. Each value is a signed event (``killed``,
``quarantined`` or ``resumed``) under the key of the target it names. Operators (with
``agora kill``), the bridge (with the kill label) and the host (after a fault) write
it; every host watches it (:mod:`agora.host.killswitch`). No channel name can reach its
subjects, and agents hold no NATS connection, so no agent can write it.
"""

from __future__ import annotations

from typing import Final

from nats.js import JetStreamContext

from agora.core.acts import check_channel, check_name
from agora.core.envelope import Event
from agora.core.errors import InputError
from agora.core.spine import CONTROL_BUCKET, event_subject, publish_fact

ALL_KEY: Final = "all"


def control_key(*, agent: str | None = None, channel: str | None = None) -> str:
    """The bucket key for a kill of one agent, one channel, or (neither) everything."""
    if agent is not None and channel is not None:
        raise InputError("a kill names an agent or a channel, not both")
    if agent is not None:
        return "agent." + check_name(agent, field="agent")
    if channel is not None:
        return "channel." + check_channel(channel)
    return ALL_KEY


def key_of_event(event: Event) -> str:
    return control_key(agent=event.agent, channel=event.channel)


async def set_switch(js: JetStreamContext, event: Event, envelope: bytes) -> None:
    """Write a signed kill, quarantine or resume to the bucket under its own key."""
    kv = await js.key_value(CONTROL_BUCKET)
    await kv.put(key_of_event(event), envelope)


async def record_and_switch(js: JetStreamContext, event: Event, envelope: bytes) -> None:
    """Publish a signed kill, quarantine or resume as a fact, then write it to the bucket,
    so no switch is ever in force without its record."""
    await publish_fact(js, subject=event_subject(event.actor), msg_id=event.id, envelope=envelope)
    await set_switch(js, event, envelope)
