"""OrderedFeed on a real nats-server: stream order from a sequence on, only the subjects
asked for, and a fresh consumer without a gap or a repeat when one is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from agora.core.ordered import OrderedFeed
from agora.core.received import RawClient
from agora.core.spine import stream_sequence
from agora.host.nats_server import EmbeddedNats

STREAM = "ORDERTEST"
WANTED = ("order.a", "order.b")
HEARTBEAT_S = 0.2


@pytest.fixture(params=["nats-py", "raw"])
async def client(
    nats_server: EmbeddedNats, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
    """A plain nats-py client or a RawClient: the feed behaves the same with both."""
    if request.param == "raw":
        nc: Client = RawClient()
        await nc.connect(nats_server.url)
    else:
        nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["order.*"]))
    yield nc
    await nc.close()


async def publish(nc: Client, count: int, *, start: int = 0, size: int = 0) -> None:
    """``count`` messages numbered from ``start``, every third on a subject not asked for."""
    js = nc.jetstream()
    for index in range(start, start + count):
        subject = ("order.a", "order.b", "order.other")[index % 3]
        await js.publish(subject, str(index).encode().ljust(size, b" "))


def wanted(first: int, end: int) -> list[int]:
    return [index for index in range(first, end) if index % 3 != 2]


async def opened(nc: Client, *, after_seq: int = 0) -> OrderedFeed:
    feed = OrderedFeed(
        nc, stream=STREAM, subjects=WANTED, after_seq=after_seq, heartbeat_s=HEARTBEAT_S
    )
    await feed.start()
    return feed


async def drain(feed: OrderedFeed, count: int, *, limit: int = 100) -> list[tuple[int, int]]:
    """(stream sequence, number published) of the next ``count`` messages."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        for message in await feed.take(limit, 0.5):
            seen.append((stream_sequence(message), int(message.data)))
    return seen


async def test_messages_come_in_stream_order_after_a_sequence(client: Client) -> None:
    await publish(client, 300)
    feed = await opened(client, after_seq=30)  # stream sequence n holds number n - 1
    seen = await drain(feed, len(wanted(30, 300)))
    assert [number for _, number in seen] == wanted(30, 300)
    assert [seq for seq, _ in seen] == [number + 1 for number in wanted(30, 300)]
    await publish(client, 30, start=300)  # and on as more comes
    assert [n for _, n in await drain(feed, len(wanted(300, 330)))] == wanted(300, 330)
    assert await feed.take(10, 0.3) == [] and feed.restarts == 0
    await feed.stop()


async def test_a_consumer_lost_on_the_server_is_made_again_without_a_gap(
    client: Client,
) -> None:
    js = client.jetstream()
    await publish(client, 60)
    feed = await opened(client)
    first = await drain(feed, 20, limit=20)
    [lost] = [info.name for info in await js.consumers_info(STREAM)]
    await js.delete_consumer(STREAM, lost)
    await publish(client, 60, start=60)
    rest = await drain(feed, len(wanted(0, 120)) - 20)
    assert [n for _, n in first + rest] == wanted(0, 120)  # nothing lost, nothing twice
    assert feed.restarts >= 1
    [made] = [info.name for info in await js.consumers_info(STREAM)]
    assert made != lost
    await feed.stop()
    assert await js.consumers_info(STREAM) == []  # a stopped feed leaves no consumer


LOST_ON_THE_WAY = {
    # a delivery numbered past the one due
    "delivery": (b"999", "$JS.ACK.{stream}.{consumer}.1.999.999.1700000000000000000.0", None),
    # a heartbeat naming a later last delivery than the feed saw
    "heartbeat": (
        b"",
        "",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 999\r\nNats-Last-Stream: 999\r\n\r\n",
    ),
}


@pytest.mark.parametrize("sign", sorted(LOST_ON_THE_WAY))
async def test_a_message_lost_on_the_way_makes_the_consumer_again_after_the_last_one(
    client: Client, sign: str
) -> None:
    """What the server sends after a message was lost between it and the client (a
    reconnect, a slow client cut off) is handed to the feed as the client's reader
    would hand it (the server refuses a forged ``$JS.ACK`` reply from any client): the
    feed reads again after the last message it holds, so nothing is missing."""
    js = client.jetstream()
    await publish(client, 30)
    feed = await opened(client)
    first = await drain(feed, 10, limit=10)
    [info] = await js.consumers_info(STREAM)
    inbox = info.config.deliver_subject
    [sid] = [sid for sid, sub in client._subs.items() if sub.subject == inbox]
    data, reply, headers = LOST_ON_THE_WAY[sign]
    reply = reply.format(stream=STREAM, consumer=info.name)
    await client._process_msg(sid, (inbox or "").encode(), reply.encode(), data, headers)
    await publish(client, 30, start=30)
    rest = await drain(feed, len(wanted(0, 60)) - 10)
    assert [n for _, n in first + rest] == wanted(0, 60)
    assert feed.restarts == 1
    await feed.stop()


async def test_a_slow_reader_gets_everything_through_flow_control(client: Client) -> None:
    """The server stops and asks once it has sent enough; the feed answers as the
    reader takes, so the buffer stays bounded and the consumer never stalls for good."""
    count = 3000
    await publish(client, count, size=4096)
    feed = await opened(client)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while len(seen) < len(wanted(0, count)) and time.monotonic() < deadline:
        seen.extend(int(message.data) for message in await feed.take(200, 0.5))
        await asyncio.sleep(0.005)
    assert seen == wanted(0, count) and feed.restarts == 0
    await feed.stop()
