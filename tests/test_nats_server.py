"""The embedded nats-server: real JetStream on loopback, state kept across restarts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from agora.core.errors import ConfigError, InternalError, InvalidChannel
from agora.core.spine import (
    STREAM,
    channel_subject,
    delivery_count,
    ensure_spine,
    publish_envelope,
    stream_place,
    stream_sequence,
)
from agora.host.nats_server import EmbeddedNats


async def test_server_runs_jetstream_on_loopback(nats_server: EmbeddedNats) -> None:
    assert nats_server.url.startswith("nats://127.0.0.1:")
    client = await nats.connect(nats_server.url)
    try:
        info = await client.jetstream().account_info()
        assert info.limits is not None
    finally:
        await client.close()


async def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    async with (
        EmbeddedNats(data_dir=tmp_path / "a") as first,
        EmbeddedNats(data_dir=tmp_path / "b") as second,
    ):
        assert first.url != second.url


async def test_one_server_per_store(tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "nats") as first:
        with pytest.raises(ConfigError, match="another agora is already running on"):
            await EmbeddedNats(data_dir=tmp_path / "nats").start()
        client = await nats.connect(first.url)  # the first one is untouched
        await client.jetstream().account_info()
        await client.close()


async def test_a_server_left_behind_by_a_killed_host_is_stopped_first(tmp_path: Path) -> None:
    left = EmbeddedNats(data_dir=tmp_path / "nats")
    await left.start()
    orphan = left._process
    assert orphan is not None
    assert left._lock is not None
    os.close(left._lock)
    async with EmbeddedNats(data_dir=tmp_path / "nats") as second:
        async with asyncio.timeout(10):
            assert await orphan.wait() == 0  # stopped (SIGTERM) before the new one started
        client = await nats.connect(second.url)
        await client.jetstream().account_info()
        await client.close()


async def test_streams_survive_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats")
    async with server:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await ensure_spine(js)
        assert await publish_envelope(js, channel="build-coord", msg_id="m1", envelope=b"{}")
        await client.close()
    assert not server.running
    async with server:
        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info(STREAM)
        await client.close()
    assert info.state.messages == 1


async def test_stopped_server_has_no_url(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats")
    await server.start()
    await server.stop()
    with pytest.raises(InternalError, match="not running"):
        _ = server.url


async def test_same_message_id_is_stored_once(nats_server: EmbeddedNats) -> None:
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        await ensure_spine(js)
        first = await publish_envelope(js, channel="build-coord", msg_id="m1", envelope=b"{}")
        again = await publish_envelope(js, channel="build-coord", msg_id="m1", envelope=b"{}")
        info = await js.stream_info(STREAM)
    finally:
        await client.close()
    assert (first, again) == (True, False)
    assert info.state.messages == 1


@pytest.mark.parametrize("channel", ["build-coord.>", "*", "secret.ops", "a b"])
def test_channel_names_cannot_reach_other_subjects(channel: str) -> None:
    with pytest.raises(InvalidChannel):
        channel_subject(channel)


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.AGORA.agent-echo.1.4217.12.1700000000000000000.3",
        "$JS.ACK.hub.ACCHASH.AGORA.agent-echo.2.4217.12.1700000000000000000.0.r4nd",
        "$JS.ACK.hub.ACCHASH.AGORA.agent-echo.2.4217.12.1700000000000000000.0",
    ],
)
def test_a_stream_sequence_is_read_as_nats_py_reads_it(reply: str) -> None:
    message = Msg(Client(), subject="agora.ch.c", reply=reply)
    assert stream_sequence(message) == message.metadata.sequence.stream == 4217
    assert delivery_count(message) == message.metadata.num_delivered
    sequence, stored_ms = stream_place(message)
    assert sequence == 4217
    assert stored_ms == int(message.metadata.timestamp.timestamp() * 1000) == 1_700_000_000_000


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.abc.1", "$JS.ACK.AGORA.c.1.2", "$JS.API.X.Y.1.2.3.4.5"]
)
def test_a_message_without_a_stream_sequence_reads_as_zero(reply: str) -> None:
    message = Msg(Client(), subject="agora.ch.c", reply=reply)
    assert stream_sequence(message) == 0
    assert stream_place(message) == (0, 0)
    assert delivery_count(message) == 0
