"""PullFeed on a real nats-server: order, limits, expiry, giving back, a lost consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from agora.core.pull import PullFeed, PullFeedError
from agora.host.nats_server import EmbeddedNats

STREAM = "PULLTEST"
SUBJECT = "pull.test"
CONSUMER = "feed"
ACK_WAIT_S = 30.0


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S),
    )
    yield nc
    await nc.close()


async def publish(nc: Client, count: int, *, start: int = 0) -> None:
    js = nc.jetstream()
    for index in range(start, start + count):
        await js.publish(SUBJECT, str(index).encode())


async def feed(nc: Client, *, batch: int, expires_s: float = 1.0) -> PullFeed:
    opened = PullFeed(nc, stream=STREAM, consumer=CONSUMER, batch=batch, expires_s=expires_s)
    await opened.start()
    return opened


async def drain(pulled: PullFeed, count: int, *, limit: int) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        messages = await pulled.take(limit, 0.5)
        assert len(messages) <= limit
        for message in messages:
            seen.append(int(message.data))
            await message.ack()
    return seen


async def test_messages_come_in_stream_order_never_more_than_the_limit(client: Client) -> None:
    await publish(client, 50)
    pulled = await feed(client, batch=16)
    assert await drain(pulled, 50, limit=7) == list(range(50))
    assert await pulled.take(7, 0.2) == []
    await pulled.stop()


async def test_messages_published_after_requests_expired_still_arrive_at_once(
    client: Client,
) -> None:
    pulled = await feed(client, batch=8, expires_s=0.2)
    assert await pulled.take(8, 0.7) == []  # several requests expired meanwhile
    await publish(client, 3)
    started = time.monotonic()
    assert await drain(pulled, 3, limit=8) == [0, 1, 2]
    assert time.monotonic() - started < 0.5  # not held until a next request
    await pulled.stop()


async def test_a_graceful_stop_gives_back_what_was_buffered(client: Client) -> None:
    await publish(client, 10)
    first = await feed(client, batch=10)
    taken = await first.take(2, 1.0)
    for message in taken:
        await message.ack()
    await asyncio.sleep(0.2)  # the rest of the batch arrives in the buffer
    await first.stop()
    second = await feed(client, batch=10)
    started = time.monotonic()
    # JetStream redelivers what is given back, not necessarily in stream order
    assert sorted(await drain(second, 8, limit=10)) == list(range(2, 10))
    assert time.monotonic() - started < ACK_WAIT_S / 10  # given back, not waited out
    await second.stop()


async def test_a_stop_without_giving_back_leaves_messages_for_redelivery(client: Client) -> None:
    await publish(client, 4)
    first = await feed(client, batch=4)
    await asyncio.sleep(0.2)
    await first.stop(give_back=False)
    info = await client.jetstream().consumer_info(STREAM, CONSUMER)
    assert info.num_ack_pending == 4  # delivered, unacknowledged: back after ack wait


async def test_a_consumer_deleted_under_a_waiting_request_is_an_error(client: Client) -> None:
    pulled = await feed(client, batch=4, expires_s=5.0)
    await client.flush()
    await asyncio.sleep(0.2)  # the request waits at the consumer
    await client.jetstream().delete_consumer(STREAM, CONSUMER)
    with pytest.raises(PullFeedError, match="is gone: Consumer Deleted"):
        await pulled.take(4, 2.0)
    await pulled.stop()


async def test_a_missing_consumer_is_an_error_not_silence(client: Client) -> None:
    await client.jetstream().delete_consumer(STREAM, CONSUMER)
    pulled = await feed(client, batch=4, expires_s=5.0)
    with pytest.raises(PullFeedError, match="no one answered"):
        await pulled.take(4, 2.0)
    await pulled.stop()


async def test_a_stopped_feed_says_so_rather_than_wait_forever(client: Client) -> None:
    pulled = await feed(client, batch=4)
    await pulled.stop()
    with pytest.raises(PullFeedError, match="stopped"):
        await pulled.take(4, 0.1)


def test_a_batch_below_one_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="batch is 0"):
        PullFeed(client, stream=STREAM, consumer=CONSUMER, batch=0)
