"""RawClient on a real nats-server: messages straight off the wire, read as nats-py reads
them, and the client's other subscriptions untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from agora.core.received import RawClient, Received, parse_headers
from agora.host.nats_server import EmbeddedNats
from tests.nats_sync import settled
from tests.wire import publish_raw

STREAM = "RAWTEST"
SUBJECT = "raw.test"
BIG_MESSAGE_ERR_CODE = 10054  # JetStream: message size exceeds maximum allowed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"NATS/1.0\r\nNats-Msg-Id: act-1\r\n\r\n", {"Nats-Msg-Id": "act-1"}),
        (b"NATS/1.0\r\nA:b\r\nC:\tspaced \r\n\r\n", {"A": "b", "C": "spaced"}),
        (
            b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
            {"Status": "100", "Description": "Idle Heartbeat"},
        ),
        (
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n",
            {"Status": "408", "Description": "Request Timeout", "Nats-Pending-Messages": "5"},
        ),
        (b"NATS/1.0 503\r\n\r\n", {"Status": "503"}),
        (b"NATS/1.0\r\nno colon\r\nbad name: x\r\n\r\n", {}),
        # a status only ever comes in the first line, never from a publisher's fields
        (b"NATS/1.0\r\nStatus: 409\r\nDescription: gone\r\nA: b\r\n\r\n", {"A": "b"}),
        (b"NATS/1.0 40\xc2\xb2 odd\r\n\r\n", {}),
        # a field given twice with different values is ambiguous: it reads as empty
        (b"NATS/1.0\r\nNats-Msg-Id: fresh\r\nNats-Msg-Id: act-1\r\n\r\n", {"Nats-Msg-Id": ""}),
        (b"NATS/1.0\r\nA: same\r\nA: same\r\n\r\n", {"A": "same"}),
    ],
)
def test_a_header_block_reads_as_nats_py_reports_it(
    raw: bytes | None, expected: dict[str, str] | None
) -> None:
    assert parse_headers(raw) == expected


@pytest.fixture
async def clients(nats_server: EmbeddedNats) -> AsyncIterator[tuple[RawClient, Client]]:
    raw = RawClient()
    await raw.connect(nats_server.url)
    plain = await nats.connect(nats_server.url)
    yield raw, plain
    await raw.close()
    await plain.close()


async def test_a_raw_subscription_sees_what_nats_py_sees(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    taken: list[Received] = []
    seen: list[Msg] = []

    def handler(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        taken.append(Received.of(raw, subject, reply, data, headers))

    async def callback(message: Msg) -> None:
        seen.append(message)

    sid = await raw.subscribe_raw("both.>", handler)
    await raw.subscribe("both.>", cb=callback)  # a plain subscription on the same client
    await settled(raw)  # the server has both subscriptions before another client publishes
    await plain.publish("both.one", b"first", headers={"Nats-Msg-Id": "m-1"})
    await plain.publish("both.two", b"second", reply="where.to")
    await settled(plain)
    for _ in range(500):
        if len(taken) == 2 and len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert [(r.subject, r.reply, r.data, r.headers) for r in taken] == [
        (m.subject, m.reply, m.data, m.headers) for m in seen
    ]
    assert taken[0].headers == {"Nats-Msg-Id": "m-1"} and taken[1].reply == "where.to"
    await raw.unsubscribe_raw(sid)
    await settled(raw)
    await plain.publish("both.three", b"third")
    await settled(plain)
    for _ in range(500):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.01)
    assert len(seen) == 3 and len(taken) == 2  # the raw one is gone, the other is not


async def test_a_subject_that_is_not_utf8_stops_no_subscription(
    nats_server: EmbeddedNats, clients: tuple[RawClient, Client]
) -> None:
    # nats-py decodes subjects strictly, and an exception ends its read loop for good:
    # one such message from anyone would leave the whole connection deaf.
    raw, _ = clients
    taken: list[Received] = []
    seen: list[Msg] = []

    async def callback(message: Msg) -> None:
        seen.append(message)

    await raw.subscribe_raw("odd.*", lambda *wire: taken.append(Received.of(raw, *wire)))
    await raw.subscribe("plain.*", cb=callback)
    await settled(raw)
    await publish_raw(nats_server.url, b"odd.\xff", b"handed over, escaped")
    await publish_raw(nats_server.url, b"plain.\xff", b"handed over, escaped")
    await publish_raw(nats_server.url, b"plain.ok", b"after")
    for _ in range(500):
        if taken and len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    # each to be refused as what it is (never dropped: an ordered consumer would take
    # the gap for a lost message and ask for it again, for good)
    assert [r.subject for r in taken] == ["odd.\\xff"]
    assert [(m.subject, m.data) for m in seen] == [
        ("plain.\\xff", b"handed over, escaped"),
        ("plain.ok", b"after"),
    ]
    assert raw.is_connected


async def test_a_plain_subscription_reads_headers_as_the_raw_ones_do(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    seen: list[Msg] = []

    async def callback(message: Msg) -> None:
        seen.append(message)

    await raw.subscribe("plain.>", cb=callback)
    await settled(raw)
    await plain.publish("plain.one", b"a", headers={"Status": "503", "Nats-Msg-Id": "m-2"})
    await plain.publish("plain.two", b"b", headers={})
    await settled(plain)
    for _ in range(500):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    # a publisher's "Status" is no status; an empty block is no headers, as nats-py says
    assert [m.headers for m in seen] == [{"Nats-Msg-Id": "m-2"}, None]
    with pytest.raises(NoRespondersError):  # the server's 503 status line still counts
        await raw.request("nobody.listens", b"?", timeout=2)


async def test_a_raw_message_is_acknowledged_and_given_back_as_nats_py_does(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    js = plain.jetstream()
    kept, given_back = await _pulled(raw, js, [b"kept", b"given back"])
    await kept.ack_sync(timeout=2)
    await given_back.nak()
    await settled(raw)
    again = await js.pull_subscribe_bind("c", stream=STREAM)
    [redelivered] = await again.fetch(1, timeout=2)
    assert redelivered.data == b"given back" and redelivered.metadata.num_delivered == 2
    await redelivered.ack_sync()
    info = await js.consumer_info(STREAM, "c")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # "kept" is not coming back


async def test_each_acknowledgement_of_a_batch_is_confirmed_on_its_own(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    js = plain.jetstream()
    taken = await _pulled(raw, js, [b"0", b"1", b"2"])
    answers = await raw.acknowledge_confirmed([m.reply for m in taken])
    assert await asyncio.wait_for(answers, 2) == [None, None, None]
    info = await js.consumer_info(STREAM, "c")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert not raw._awaiting
    # an acknowledgement nothing answers: given up on, its place freed
    await plain.subscribe("silent.ack", cb=_ignore)
    await settled(plain)
    unanswered = await raw.acknowledge_confirmed(["silent.ack"])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await unanswered
    assert unanswered.done() and not raw._awaiting
    # one no one listens to: the server's 503 is no confirmation
    [refused] = await asyncio.wait_for(await raw.acknowledge_confirmed(["nobody.here"]), 2)
    assert isinstance(refused, APIError) and "503" in str(refused)


async def test_publishes_are_acknowledged_in_order_a_repeat_too(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    js = plain.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    items = [(SUBJECT, f"m-{n}", b"%d" % n) for n in range(300)]
    await raw.publish_acked(items)
    await raw.publish_acked(items[:5])  # ids the stream saw already: acknowledged, dropped
    sub = await js.pull_subscribe(SUBJECT, "reader", stream=STREAM)
    stored = await sub.fetch(300, timeout=2)
    assert [m.data for m in stored] == [data for _, _, data in items]
    assert [(m.headers or {}).get("Nats-Msg-Id") for m in stored[:2]] == ["m-0", "m-1"]
    assert (await js.stream_info(STREAM)).state.messages == 300
    assert not raw._awaiting  # every acknowledgement was taken


async def test_a_publish_the_server_refuses_raises_what_nats_py_raises(
    clients: tuple[RawClient, Client],
) -> None:
    raw, plain = clients
    js = plain.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], max_msg_size=100))
    with pytest.raises(APIError) as refused:
        await raw.publish_acked([(SUBJECT, "small", b"ok"), (SUBJECT, "big", b"x" * 500)])
    assert refused.value.err_code == BIG_MESSAGE_ERR_CODE
    assert (await js.stream_info(STREAM)).state.messages == 1  # the first went in
    with pytest.raises(NoStreamResponseError):  # no stream takes that subject
        await raw.publish_acked([("no.stream.here", "lost", b"x")])
    # something that answers no acknowledgement: the wait ends, its place is freed
    await plain.subscribe("silent.subject", cb=_ignore)
    await settled(plain)
    with pytest.raises(TimeoutError):
        await raw.publish_acked([("silent.subject", "unheard", b"x")], timeout_s=0.3)
    assert not raw._awaiting


async def test_an_answer_from_anything_but_a_stream_is_no_acknowledgement(
    clients: tuple[RawClient, Client],
) -> None:
    # A plain subscriber on a subject no stream takes answers first: the publish is
    # not taken as stored (nats-py's PubAck needs the stream and sequence too).
    raw, plain = clients

    async def answer(message: Msg) -> None:
        await message.respond(b'{"ok": true}')

    await plain.subscribe("answered.subject", cb=answer)
    await settled(plain)
    with pytest.raises(APIError, match="names no stream and sequence"):
        await raw.publish_acked([("answered.subject", "fake", b"x")])
    assert not raw._awaiting


async def _pulled(raw: RawClient, js: JetStreamContext, texts: list[bytes]) -> list[Received]:
    """``texts`` published to a fresh stream, then pulled through ``raw`` straight off the
    wire from a durable consumer ``c`` with explicit acknowledgements."""
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    for text in texts:
        await js.publish(SUBJECT, text)
    inbox = raw.new_inbox()
    taken: list[Received] = []
    await raw.subscribe_raw(inbox, lambda *wire: taken.append(Received.of(raw, *wire)))
    request = b'{"batch":%d}' % len(texts)
    await raw.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.c", request, reply=inbox)
    for _ in range(500):
        if len(taken) == len(texts):
            break
        await asyncio.sleep(0.01)
    return taken


async def _ignore(_: Msg) -> None:
    return None
