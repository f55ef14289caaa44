"""The JetStream spine: one stream for channel traffic, one subject per channel.

Channel ``build-coord`` is subject ``agora.ch.build-coord``. Channel names are checked
before they become subjects, so no name can reach another subject (``.``, ``*`` and
``>`` are refused). Every publish carries ``Nats-Msg-Id`` = the act's id, so a repeat
within the stream's duplicate window is dropped by the server.
"""

from __future__ import annotations

from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from agora.core.acts import check_channel

CHANNEL_STREAM: Final = "AGORA_CHANNELS"
CHANNEL_SUBJECT_PREFIX: Final = "agora.ch."
DUPLICATE_WINDOW_S: Final = 120.0
MSG_ID_HEADER: Final = "Nats-Msg-Id"


def channel_subject(channel: str) -> str:
    return CHANNEL_SUBJECT_PREFIX + check_channel(channel)


def channel_of(subject: str) -> str:
    """The channel a subject on the channel stream belongs to (checked again)."""
    return check_channel(subject.removeprefix(CHANNEL_SUBJECT_PREFIX))


def channel_stream_config(*, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=CHANNEL_STREAM,
        subjects=[CHANNEL_SUBJECT_PREFIX + "*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


async def ensure_channel_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the channel stream, or bring its configuration up to date."""
    config = channel_stream_config(replicas=replicas)
    try:
        await js.stream_info(CHANNEL_STREAM)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def publish_envelope(
    js: JetStreamContext, *, channel: str, msg_id: str, envelope: bytes
) -> bool:
    """Publish a signed envelope to its channel; False if JetStream saw it already."""
    ack = await js.publish(channel_subject(channel), envelope, headers={MSG_ID_HEADER: msg_id})
    return not ack.duplicate
