"""Links between channels and issues, in a bucket of their own, on a real nats-server:
listed without reading anything else, whatever is unlinked meanwhile, and each with
when it was made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import IssueRef
from agora.bridge.github import to_stamp
from agora.bridge.links import LEGACY_MOVED, Link, Links, watermark_key
from agora.bridge.streams import BRIDGE_BUCKET, LINKS_BUCKET, ensure_bridge_streams
from agora.core.errors import InputError
from agora.host.nats_server import EmbeddedNats

REPO = "octo/repo"
CHANNELS = {f"ch-{n}" for n in range(40)}
AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(nats_server.url)
    context = client.jetstream()
    await ensure_bridge_streams(context)
    yield context
    await client.close()


async def test_a_label_link_is_kept_in_its_own_bucket_with_its_time(js: JetStreamContext) -> None:
    links = Links(js, {}, CHANNELS)
    for n in range(100):  # what else the bridge remembers is never read to list links
        await (await js.key_value(BRIDGE_BUCKET)).put(f"seen.{n}", b"1")
    assert await links.link(REPO, 7, "ch-1", at=AT)
    assert await links.linked() == [Link("ch-1", IssueRef(REPO, 7), AT)]
    assert await (await js.key_value(LINKS_BUCKET)).keys() == [f"{REPO}/7"]
    assert await links.channel_for("Octo/Repo", 7) == "ch-1"  # GitHub's names, any case


async def test_listing_links_while_they_are_removed_never_fails(js: JetStreamContext) -> None:
    links = Links(js, {}, CHANNELS)
    for n, channel in enumerate(sorted(CHANNELS)):
        await links.link(REPO, n + 1, channel, at=AT)

    async def unlink_all() -> None:
        for n, channel in enumerate(sorted(CHANNELS)):
            assert await links.unlink(REPO, n + 1, channel)

    async def list_meanwhile() -> list[int]:
        sizes: list[int] = []
        while not sizes or sizes[-1]:
            sizes.append(len(await links.issues()))
        return sizes

    _, sizes = await asyncio.gather(unlink_all(), list_meanwhile())
    assert sizes[-1] == 0 and len(sizes) > 1


async def test_a_configured_link_keeps_the_time_it_was_first_seen(js: JetStreamContext) -> None:
    configured = {"ch-1": IssueRef(REPO, 1)}
    [link] = await Links(js, configured, CHANNELS).linked()
    assert link.linked_at is None  # not seen yet
    first = await Links(js, configured, CHANNELS).configured_seen(link, AT)
    later = await Links(js, configured, CHANNELS).configured_seen(link, datetime.now(UTC))
    assert first == later == AT
    assert await Links(js, configured, CHANNELS).linked() == [Link("ch-1", link.issue, AT)]


async def test_links_kept_before_they_had_a_bucket_are_moved_once(js: JetStreamContext) -> None:
    bridge = await js.key_value(BRIDGE_BUCKET)
    await bridge.put("link/Octo/Repo/3", b"ch-2")  # as an older bridge labelled it
    await bridge.put(watermark_key(REPO, 3), to_stamp(AT).encode())
    links = Links(js, {}, CHANNELS)
    await links.prepare()
    assert await links.linked() == [Link("ch-2", IssueRef("Octo/Repo", 3), AT)]
    with pytest.raises(KeyNotFoundError):
        await bridge.get("link/Octo/Repo/3")
    assert (await bridge.get(LEGACY_MOVED)).value == b"1"


async def test_an_issue_configured_again_is_linked_afresh(js: JetStreamContext) -> None:
    configured = {"ch-1": IssueRef(REPO, 1)}
    [link] = await Links(js, configured, CHANNELS).linked()
    await Links(js, configured, CHANNELS).configured_seen(link, AT)
    await Links(js, {}, CHANNELS).prepare()  # a start without it in the configuration
    assert await Links(js, configured, CHANNELS).linked() == [Link("ch-1", link.issue, None)]


async def test_a_label_cannot_link_a_channel_the_bridge_may_not_speak_on(
    js: JetStreamContext,
) -> None:
    links = Links(js, {}, CHANNELS, granted=lambda channel: channel == "ch-1")
    with pytest.raises(InputError, match="not granted channel 'ch-2' in the key registry"):
        await links.link(REPO, 8, "ch-2", at=AT)
    assert await links.linked() == []  # nothing changed
    assert await links.link(REPO, 8, "ch-1", at=AT)
