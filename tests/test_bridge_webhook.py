"""The webhook receiver's refusals at its edge, over real HTTP, on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import nats
import pytest
from aiohttp import web
from nats.aio.client import Client

from agora.bridge import webhook
from agora.bridge.config import Secret
from agora.bridge.streams import DELIVERIES_BUCKET, WEBHOOK_STREAM, ensure_bridge_streams
from agora.bridge.webhook import (
    PUBLISH_HEADROOM_BYTES,
    WebhookReceiver,
    body_key,
    handled_keys,
    signature_of,
)
from agora.host.nats_server import EmbeddedNats

SECRET = "webhook-secret-for-tests"  # noqa: S105 - a test fixture, not a credential
BODY = json.dumps({"action": "created", "comment": {"body": "hi"}}).encode()


@dataclass
class Served:
    receiver: WebhookReceiver
    url: str
    client: Client

    async def stored(self) -> int:
        return (await self.client.jetstream().stream_info(WEBHOOK_STREAM)).state.messages


@asynccontextmanager
async def _serve(nats_server: EmbeddedNats, max_body_bytes: int) -> AsyncIterator[Served]:
    client = await nats.connect(nats_server.url)
    await ensure_bridge_streams(client.jetstream())
    receiver = WebhookReceiver(
        nc=client, secret=Secret(SECRET, "the tests"), max_body_bytes=max_body_bytes
    )
    runner = web.AppRunner(receiver.application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(receiver, f"http://127.0.0.1:{port}/webhook", client)
    finally:
        await runner.cleanup()
        await client.close()


@pytest.fixture
async def served(nats_server: EmbeddedNats) -> AsyncIterator[Served]:
    async with _serve(nats_server, 1024 * 1024) as served:
        yield served


def _headers(body: bytes = BODY, delivery: str = "d-1", **more: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "issue_comment",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature_of(SECRET, body),
        **more,
    }


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """The status and the error (or the whole answer) the receiver gives."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        answer = await response.json()
        return response.status, str(answer.get("error", answer))


async def test_a_handled_body_posted_again_as_another_event_is_answered_as_a_repeat(
    served: Served,
) -> None:
    # The signature covers the body, not the event header: a comment's signed body sent
    # again as "issues" under a fresh delivery id would fail to parse, and be refused as
    # a fact, every time it is sent.
    status, _ = await _post(served.url, BODY, _headers(delivery="d-1"))
    assert status == 202
    handled = await served.client.jetstream().key_value(DELIVERIES_BUCKET)
    for key in ("d-1", body_key(BODY)):  # as the worker marks a comment it handled
        await handled.put(key, b"handled")
    swapped = _headers(delivery="d-2", **{"X-GitHub-Event": "issues"})
    status, answer = await _post(served.url, BODY, swapped)
    assert (status, answer) == (200, str({"duplicate": "d-2"}))
    assert served.receiver.duplicates == 1
    assert await served.stored() == 1
    assert sorted(await handled.keys()) == sorted(["d-1", body_key(BODY)])


def test_only_a_label_event_by_its_header_and_its_body_alike_is_not_known_by_its_body() -> None:
    label = {"action": "labeled", "issue": {"number": 1}, "label": {"name": "agora:kill"}}
    body = json.dumps(label).encode()
    assert handled_keys("issues", "d-1", body, label) == ("d-1",)
    assert handled_keys("issue_comment", "d-1", body, label) == ("d-1", body_key(body))
    comment = json.loads(BODY)
    assert handled_keys("issues", "d-1", BODY, comment) == ("d-1", body_key(BODY))
    pull_request = {"action": "labeled", "pull_request": {"number": 1}, "label": {}}
    body = json.dumps(pull_request).encode()
    assert handled_keys("issues", "d-1", body, pull_request) == ("d-1", body_key(body))


async def test_a_signature_header_that_is_not_ascii_is_refused_with_401(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1].split("/", 1)[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-GitHub-Event: issue_comment\r\nX-GitHub-Delivery: d-1\r\n"
        b"X-Hub-Signature-256: sha256=\xc3\xa9\xff\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY
    )
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"401"
    assert b"X-Hub-Signature-256 does not match" in rest
    assert served.receiver.refused == 1
    assert await served.stored() == 0


async def test_a_form_encoded_delivery_is_refused_with_415_naming_the_content_type(
    served: Served,
) -> None:
    body = urllib.parse.urlencode({"payload": BODY.decode()}).encode()
    headers = _headers(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, error = await _post(served.url, body, headers)
    assert status == 415
    assert "'application/x-www-form-urlencoded'" in error
    assert "set the webhook's content type to application/json" in error
    assert served.receiver.refused == 1
    assert await served.stored() == 0


async def test_a_delivery_id_too_long_to_name_its_facts_is_refused_with_400(
    served: Served,
) -> None:
    status, error = await _post(served.url, BODY, _headers(delivery="a" * 51))
    assert status == 400
    assert "1 to 50 letters, digits or '-'" in error
    status, _ = await _post(served.url, BODY, _headers(delivery="a" * 50))
    assert status == 202


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
    ids=["nested-too-deeply", "a-number-too-long", "not-utf8"],
)
async def test_a_signed_body_that_is_no_json_event_is_refused_with_400(
    served: Served, body: bytes, said: str
) -> None:
    status, error = await _post(served.url, body, _headers(body))
    assert status == 400
    assert said in error
    assert served.receiver.refused == 1
    assert await served.stored() == 0


async def test_a_body_sent_too_slowly_holds_its_place_for_a_bounded_time(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unsigned clients that start a body and never finish it must not hold the
    # receiver's memory, or its places, for good.
    monkeypatch.setattr(webhook, "BODY_READ_S", 0.5)
    monkeypatch.setattr(webhook, "MAX_BODIES_READ_AT_ONCE", 1)
    async with _serve(nats_server, 1024 * 1024) as served:
        port = int(served.url.rsplit(":", 1)[1].split("/", 1)[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"{" * 10
        )
        await writer.drain()
        await asyncio.sleep(0.1)  # its body is being read: the one place is taken
        status, error = await _post(served.url, BODY, _headers(delivery="d-busy"))
        assert (status, error) == (503, "1 deliveries are being read already; try again")
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.split()[1] == b"408"
        writer.close()
        status, _ = await _post(served.url, BODY, _headers(delivery="d-after"))
        assert status == 202
        assert served.receiver.refused == 2
        assert await served.stored() == 1


async def test_a_body_the_nats_server_cannot_store_is_refused_with_413_not_503(
    nats_server: EmbeddedNats,
) -> None:
    async with _serve(nats_server, 8 * 1024 * 1024) as served:
        limit = served.client.max_payload - PUBLISH_HEADROOM_BYTES
        body = b"{" + b" " * limit + b"}"
        status, error = await _post(served.url, body, _headers(body))
        assert status == 413
        assert f"the limit is {limit}" in error
        assert f"takes {served.client.max_payload} bytes per message" in error
        assert "max_payload" in error
        assert await served.stored() == 0
