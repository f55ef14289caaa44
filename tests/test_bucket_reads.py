"""Reading what a key-value bucket holds at start, on a real nats-server, when nats-py's
watcher says "that was all" before the first value arrived (it can: the server sent the
value, so nothing is pending, but the client has not counted it yet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from agora.core.control import set_switch
from agora.core.envelope import Event, EventKind
from agora.core.ids import new_id, now_ms
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact
from agora.core.spine import (
    CONTROL_BUCKET,
    CONTROL_HISTORY,
    STATUS_BUCKET,
    STATUS_KEPT_S,
    bucket_history,
    bucket_keys,
    bucket_values,
    ensure_spine,
)
from agora.host.killswitch import KillSwitch
from agora.host.nats_server import EmbeddedNats


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    await ensure_spine(nc.jetstream())
    yield nc
    await nc.close()


class EndFirst:
    """A bucket watcher that says "that was all" before anything, as nats-py's can."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._said = False

    def __aiter__(self) -> EndFirst:
        return self

    async def __anext__(self) -> Any:
        if not self._said:
            self._said = True
            return None
        return await self._inner.__anext__()

    async def stop(self) -> None:
        await self._inner.stop()


@pytest.fixture
def ends_first(monkeypatch: pytest.MonkeyPatch) -> None:
    watchall = KeyValue.watchall

    async def early(self: KeyValue, **kwargs: Any) -> EndFirst:
        return EndFirst(await watchall(self, **kwargs))

    monkeypatch.setattr(KeyValue, "watchall", early)


def _kill(keys: dict[str, SigningKey], kind: EventKind = EventKind.KILLED) -> tuple[Event, bytes]:
    event = Event(
        id=new_id("ev"),
        kind=kind,
        actor="maintainer",
        time_ms=now_ms(),
        reason=kind.value,
        channel="build-coord",
    )
    return event, sign_fact(event, keys["maintainer"])


@pytest.mark.usefixtures("ends_first")
async def test_a_kill_whose_key_was_deleted_holds_though_the_watcher_ends_early(
    client: Client, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    js = client.jetstream()
    await set_switch(js, *_kill(keys))
    await (await js.key_value(CONTROL_BUCKET)).delete("channel.build-coord")  # no key needed
    switch = KillSwitch(registry)
    await switch.start(js)
    try:
        # the deletion's marker came after "that was all": still read as the start's
        # history, in which the kill stands
        assert switch.state.blocks("synth-agent", "build-coord")
    finally:
        await switch.stop()


@pytest.mark.usefixtures("ends_first")
async def test_an_empty_control_bucket_is_taken_at_the_watchers_word(
    client: Client, registry: KeyRegistry
) -> None:
    switch = KillSwitch(registry)
    await switch.start(client.jetstream())  # returns: nothing more is coming
    try:
        assert switch.state.stopped == {}
    finally:
        await switch.stop()


async def test_bucket_keys_lists_what_the_stream_holds(client: Client) -> None:
    js = client.jetstream()
    kv = await js.create_key_value(bucket="listed")
    assert await bucket_keys(js, "listed") == []
    for key in ("b", "a", "octo/my.repo/1"):
        await kv.put(key, b"x")
    await kv.delete("b")
    # a deleted key's marker is listed too (a get tells it is gone)
    assert await bucket_keys(js, "listed") == ["a", "b", "octo/my.repo/1"]
    assert await bucket_keys(js, "listed", "octo/my.>") == ["octo/my.repo/1"]
    assert await bucket_values(js, "listed") == {"a": b"x", "octo/my.repo/1": b"x"}


async def test_bucket_keys_reads_past_the_servers_page_of_100000_subjects(client: Client) -> None:
    js = client.jetstream()
    await js.create_key_value(bucket="many")
    count = 100_003  # the server lists 100,000 subjects in one answer
    for number in range(count - 1):
        await client.publish(f"$KV.many.k{number:06d}", b"x")
    # the stream stores what one connection sends in order: the last one's
    # acknowledgement comes when all are stored
    await js.publish(f"$KV.many.k{count - 1:06d}", b"x")
    keys = await bucket_keys(js, "many")
    assert len(keys) == count
    assert keys[0] == "k000000" and keys[-1] == f"k{count - 1:06d}"
    assert await bucket_keys(js, "many", "k100002") == ["k100002"]


async def test_bucket_history_reads_every_value_kept_under_a_key_in_order(
    client: Client,
) -> None:
    js = client.jetstream()
    kv = await js.create_key_value(bucket="kept", history=8)
    assert await bucket_history(js, "kept", "k") == []
    for value in (b"one", b"two"):
        await kv.put("k", value)
    await kv.put("other", b"not this key's")
    await kv.delete("k")
    entries = await bucket_history(js, "kept", "k")
    assert [(e.value, e.operation) for e in entries] == [
        (b"one", None),
        (b"two", None),
        (None, "DEL"),
    ]
    assert [e.revision for e in entries] == [1, 2, 4]


async def test_the_status_bucket_forgets_reports_no_host_rewrote_for_a_week(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        # as an older version made it: no age limit, and the control bucket keeping less
        await js.create_key_value(bucket=STATUS_BUCKET, history=1)
        await js.create_key_value(bucket=CONTROL_BUCKET, history=5)
        await ensure_spine(js)
        status = (await js.stream_info(f"KV_{STATUS_BUCKET}")).config
        control = (await js.stream_info(f"KV_{CONTROL_BUCKET}")).config
        assert status.max_age == STATUS_KEPT_S
        assert (control.max_msgs_per_subject, control.max_age) == (CONTROL_HISTORY, 0)
        await ensure_spine(js)  # nothing left to change
        assert (await js.stream_info(f"KV_{STATUS_BUCKET}")).config == status
    finally:
        await nc.close()
