"""The bridge's own JetStream state, beside the host's spine.

- ``AGORA_WEBHOOKS``: every accepted delivery, as received (``agora.gh.<event>``), with
  ``Nats-Msg-Id`` = the delivery id; the inbound worker reads it in order;
- ``agora-deliveries``: the delivery ids already handled (kept 30 days, beyond
  GitHub's three-day redelivery window and JetStream's two-minute duplicate window);
- ``agora-links``: the links made by label, one key per issue, and when each link was
  made (so they are listed without reading anything else);
- ``agora-bridge``: the comments seen (kept for good: an old comment edited later is
  listed again by the catch-up), the acts they became, the comments posted, the label
  events taken and how many alike were judged (the catch-up lists them again), and the
  catch-up watermarks;
- ``agora-bridge-out``: the signed envelope of each fact the bridge published, so that
  handling a delivery again publishes the very same bytes (kept 30 days).
"""

from __future__ import annotations

from typing import Final

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

WEBHOOK_STREAM: Final = "AGORA_WEBHOOKS"
WEBHOOK_SUBJECT_PREFIX: Final = "agora.gh."
DELIVERIES_BUCKET: Final = "agora-deliveries"
BRIDGE_BUCKET: Final = "agora-bridge"
LINKS_BUCKET: Final = "agora-links"
OUT_BUCKET: Final = "agora-bridge-out"
DELIVERY_MEMORY_S: Final = 30 * 24 * 3600.0


async def ensure_bridge_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    config = StreamConfig(
        name=WEBHOOK_STREAM,
        subjects=[WEBHOOK_SUBJECT_PREFIX + "*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=120.0,
        max_age=DELIVERY_MEMORY_S,
        num_replicas=replicas,
    )
    try:
        await js.stream_info(WEBHOOK_STREAM)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)
    buckets = (
        (DELIVERIES_BUCKET, DELIVERY_MEMORY_S),
        (BRIDGE_BUCKET, 0.0),
        (LINKS_BUCKET, 0.0),
        (OUT_BUCKET, DELIVERY_MEMORY_S),
    )
    for bucket, ttl in buckets:
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, ttl=ttl or None, replicas=replicas)
            )


class Buckets:
    """The bridge's key-value buckets, looked up once (each lookup is a round trip)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._found: dict[str, KeyValue] = {}

    async def get(self, name: str) -> KeyValue:
        bucket = self._found.get(name)
        if bucket is None:
            bucket = await self._js.key_value(name)
            self._found[name] = bucket
        return bucket
