"""The bridge's facts go out once: the same bytes when handled again, an act whose
first publish never landed (or landed too late) issued again under an id of its own,
and one envelope kept when two bridges handle a delivery at once, on a real
nats-server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from agora.bridge.once import OnceOut, Signer, reissued_ident
from agora.bridge.streams import OUT_BUCKET, Buckets, ensure_bridge_streams
from agora.core.ids import now_ms
from agora.core.spine import (
    FRESH_FOR_MS,
    MSG_ID_HEADER,
    STREAM,
    channel_subject,
    ensure_spine,
    read_in_order,
)
from agora.host.nats_server import EmbeddedNats

SUBJECT = channel_subject("build-coord")
IDENT = "act-gh-comment-7"


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(nats_server.url)
    context = client.jetstream()
    await ensure_spine(context)
    await ensure_bridge_streams(context)
    yield context
    await client.close()


def signer(made: list[int]) -> Signer:
    def sign(ident: str, at_ms: int) -> bytes:
        made.append(at_ms)
        return json.dumps({"id": ident, "signed_at": at_ms}).encode()

    return sign


async def copies(js: JetStreamContext, ident: str = IDENT) -> list[bytes]:
    found: list[bytes] = []
    subscription = await read_in_order(js, subjects=[SUBJECT], after_seq=0)
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            if (message.headers or {}).get(MSG_ID_HEADER) == ident:
                found.append(message.data)
    finally:
        await subscription.unsubscribe()


async def keep(js: JetStreamContext, *, signed_ms: int, envelope: bytes) -> None:
    """As a bridge that stopped after keeping an envelope would have left it."""
    after_seq = (await js.stream_info(STREAM)).state.last_seq
    record = {
        "signed_ms": signed_ms,
        "after_seq": after_seq,
        "envelope": base64.b64encode(envelope).decode(),
    }
    await (await js.key_value(OUT_BUCKET)).put(IDENT, json.dumps(record).encode())


async def test_a_fact_handled_twice_goes_out_in_the_same_bytes(js: JetStreamContext) -> None:
    out = OnceOut(js, Buckets(js))
    made: list[int] = []
    for _ in range(2):
        await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert len(made) == 1  # signed once
    assert len(await copies(js)) == 1  # the second was the same id: dropped by the server


async def test_an_old_act_already_in_the_stream_is_not_sent_again(js: JetStreamContext) -> None:
    old = now_ms() - 70_000  # kept over a minute ago; it landed (now) in time to be fresh
    envelope = json.dumps({"signed_at": old}).encode()
    await keep(js, signed_ms=old, envelope=envelope)
    await js.publish(SUBJECT, envelope, headers={MSG_ID_HEADER: IDENT})  # it did land
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert made == []
    assert await copies(js) == [envelope]


async def test_an_old_act_that_never_landed_is_issued_again_now_under_a_new_id(
    js: JetStreamContext,
) -> None:
    old = now_ms() - 200_000
    await keep(js, signed_ms=old, envelope=json.dumps({"signed_at": old}).encode())
    made: list[int] = []
    before = now_ms()
    out = OnceOut(js, Buckets(js))
    ident = await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert ident == f"{IDENT}-r2"
    [sent] = await copies(js, ident)
    assert json.loads(sent) == {"id": ident, "signed_at": made[0]}
    assert made[0] >= before  # fresh, not the old bytes


async def test_an_old_act_that_landed_too_late_to_be_fresh_is_issued_again_at_once(
    js: JetStreamContext,
) -> None:
    # A first publish held up past FRESH_FOR_MS: the copy in the stream reaches no host
    # as fresh, and the recorder keeps it under the first id, so the act goes out again
    # under a new time and an id of its own (no wait for the duplicate window either).
    old = now_ms() - FRESH_FOR_MS - 10_000
    late = json.dumps({"signed_at": old}).encode()
    await keep(js, signed_ms=old, envelope=late)
    await js.publish(SUBJECT, late, headers={MSG_ID_HEADER: IDENT})  # it lands only now
    made: list[int] = []
    before = now_ms()
    out = OnceOut(js, Buckets(js))
    again = await out.envelope(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert again.ident == f"{IDENT}-r2" and again.envelope is not None
    assert json.loads(again.envelope) == {"id": again.ident, "signed_at": made[0]}
    assert before <= made[0] < before + 10_000
    # what it signed is kept: handled once more, the delivery goes out in those bytes
    assert await out.envelope(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True) == again
    assert len(made) == 1


def test_an_act_issued_again_takes_the_next_derived_id() -> None:
    assert reissued_ident(IDENT, IDENT) == f"{IDENT}-r2"
    assert reissued_ident(IDENT, f"{IDENT}-r2") == f"{IDENT}-r3"


async def test_two_bridges_handling_one_delivery_at_once_keep_and_send_one_envelope(
    js: JetStreamContext,
) -> None:
    made: list[int] = []
    outs = [OnceOut(js, Buckets(js)) for _ in range(2)]
    issued = await asyncio.gather(
        *(o.envelope(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True) for o in outs)
    )
    assert issued[0] == issued[1]  # the one that lost the compare-and-set took the winner's
    kept = json.loads((await (await js.key_value(OUT_BUCKET)).get(IDENT)).value or b"")
    assert base64.b64decode(kept["envelope"]) == issued[0].envelope


async def test_an_old_event_is_sent_again_as_it_was(js: JetStreamContext) -> None:
    old = now_ms() - 200_000
    envelope = json.dumps({"signed_at": old}).encode()
    await keep(js, signed_ms=old, envelope=envelope)
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=False)
    assert made == []  # reaches no agent: the very bytes, whatever their age
    assert await copies(js) == [envelope]


async def test_a_kept_envelope_that_is_not_the_one_meant_is_signed_anew(
    js: JetStreamContext,
) -> None:
    # whoever can write the bucket could plant another signed fact under the id
    planted = json.dumps({"signed_at": 1, "planted": True}).encode()
    await keep(js, signed_ms=now_ms(), envelope=planted)
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    issued = await out.envelope(
        subject=SUBJECT,
        ident=IDENT,
        sign=signer(made),
        act=False,
        meant=lambda kept: b"planted" not in kept,
    )
    assert issued.envelope is not None and b"planted" not in issued.envelope and len(made) == 1
    again = await out.envelope(subject=SUBJECT, ident=IDENT, sign=signer(made), act=False)
    assert again == issued  # what it signed is what is kept now


async def test_a_fact_whose_id_another_message_took_first_goes_out_under_a_new_one(
    js: JetStreamContext,
) -> None:
    # Whoever may publish on the stream can work out a bridge fact's id (it follows from
    # GitHub's) and publish something under it first: the server would drop the fact as
    # a repeat. It goes out under a new id instead, kept for the next handling.
    await js.publish(SUBJECT, b"squatting", headers={MSG_ID_HEADER: IDENT})
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    ident = await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert ident != IDENT and ident.startswith("act-")
    [sent] = await copies(js, ident)
    assert json.loads(sent) == {"id": ident, "signed_at": made[-1]}
    assert len(made) == 2  # under the id taken, then under its own
    # handled again (a redelivery): the same id and bytes, published once
    assert await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True) == ident
    assert len(made) == 2 and len(await copies(js, ident)) == 1


async def test_an_old_act_whose_id_another_message_holds_is_issued_again(
    js: JetStreamContext,
) -> None:
    # Kept, then the bridge stopped before publishing; meanwhile another message took
    # its id in the stream. Found there later, it is not taken for the act.
    old = now_ms() - 70_000
    envelope = json.dumps({"signed_at": old}).encode()
    await keep(js, signed_ms=old, envelope=envelope)
    await js.publish(SUBJECT, b"squatting", headers={MSG_ID_HEADER: IDENT})
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    ident = await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True)
    assert ident != IDENT
    [sent] = await copies(js, ident)
    assert json.loads(sent) == {"id": ident, "signed_at": made[-1]}


async def test_two_bridges_finding_an_id_taken_issue_the_fact_once(js: JetStreamContext) -> None:
    await js.publish(SUBJECT, b"squatting", headers={MSG_ID_HEADER: IDENT})
    made: list[int] = []
    bridges = [OnceOut(js, Buckets(js)) for _ in range(2)]
    idents = await asyncio.gather(
        *(b.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=True) for b in bridges)
    )
    assert idents[0] == idents[1] != IDENT
    assert len(await copies(js, idents[0])) == 1


async def test_a_fact_whose_stored_copy_was_deleted_is_issued_again(js: JetStreamContext) -> None:
    # Handled again within the duplicate window, after its message was deleted from the
    # stream: the server still calls it a repeat, of a message no host will see.
    made: list[int] = []
    out = OnceOut(js, Buckets(js))
    first = await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=False)
    assert first == IDENT
    await js.delete_msg(STREAM, (await js.stream_info(STREAM)).state.last_seq)
    again = await out.publish(subject=SUBJECT, ident=IDENT, sign=signer(made), act=False)
    assert again != IDENT
    assert len(await copies(js, again)) == 1
