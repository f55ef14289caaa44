"""PullFeed on a real nats-server: order, limits, expiry, giving back, a lost consumer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from agora.core.pull import PullFeed, PullFeedError
from agora.core.received import RawClient
from agora.host.nats_server import EmbeddedNats
from tests.nats_sync import settled

STREAM = "PULLTEST"
SUBJECT = "pull.test"
CONSUMER = "feed"
ACK_WAIT_S = 30.0


@pytest.fixture(params=["nats-py", "raw"])
async def client(
    nats_server: EmbeddedNats, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
    """A plain nats-py client (messages through its callbacks) or a RawClient (messages
    taken straight off the wire): the feed behaves the same with both."""
    if request.param == "raw":
        nc: Client = RawClient()
        await nc.connect(nats_server.url)
    else:
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
    assert await drain(first, 2, limit=2) == [0, 1]  # a take returns what arrived so far
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
    await settled(client)
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


async def test_a_consumer_whose_limits_refuse_the_batch_is_an_error_not_silence(
    client: Client,
) -> None:
    # Every request for more than max_batch is refused outright (409 and no pending
    # count): asking again forever would hand the agent nothing and say nothing.
    config = {"durable_name": "limited", "ack_policy": "explicit", "max_batch": 2}
    created = await client.request(  # nats-py's ConsumerConfig has no max_batch
        f"$JS.API.CONSUMER.CREATE.{STREAM}.limited",
        json.dumps({"stream_name": STREAM, "config": config}).encode(),
    )
    assert b'"error"' not in created.data
    await publish(client, 3)
    pulled = PullFeed(client, stream=STREAM, consumer="limited", batch=4)
    await pulled.start()
    with pytest.raises(PullFeedError, match="refuses pull requests for 4 messages: Exceeded Max"):
        await pulled.take(4, 2.0)
    await pulled.stop()


async def test_a_stored_message_with_status_headers_is_a_message_not_a_status(
    client: Client,
) -> None:
    # anyone who may publish can set any header; only the server's own answers (which
    # come with no reply subject) are statuses
    for status in ("409", "100"):
        await client.jetstream().publish(
            SUBJECT, status.encode(), headers={"Status": status, "Description": "Consumer Deleted"}
        )
    pulled = await feed(client, batch=4)
    assert await drain(pulled, 2, limit=4) == [409, 100]
    await pulled.stop()


async def test_what_is_no_message_and_no_status_on_the_feeds_inbox_changes_nothing(
    client: Client, nats_server: EmbeddedNats
) -> None:
    pulled = await feed(client, batch=4)
    inbox = pulled._inbox  # where the server answers the feed
    # a peer speaking the protocol: a status whose count is a digit int() refuses, and a
    # message with no reply subject (no stored message comes without one)
    status = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: \xc2\xb2\r\n\r\n"
    await _send_raw(nats_server, [(inbox, status, b""), (inbox, b"NATS/1.0\r\n\r\n", b"1")])
    await publish(client, 2)
    assert await drain(pulled, 2, limit=4) == [0, 1]  # the connection still reads
    await pulled.stop()


async def _send_raw(server: EmbeddedNats, messages: list[tuple[str, bytes, bytes]]) -> None:
    """Publish with header blocks as given, over a plain connection (HPUB)."""
    host, port = server.url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n')
    for subject, headers, payload in messages:
        size = len(headers) + len(payload)
        writer.write(
            b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(headers), size, headers, payload)
        )
    writer.write(b"PING\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"PONG")
    writer.close()
    await writer.wait_closed()


async def test_a_stopped_feed_says_so_rather_than_wait_forever(client: Client) -> None:
    pulled = await feed(client, batch=4)
    await pulled.stop()
    with pytest.raises(PullFeedError, match="stopped"):
        await pulled.take(4, 0.1)


def test_a_batch_below_one_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="batch is 0"):
        PullFeed(client, stream=STREAM, consumer=CONSUMER, batch=0)
