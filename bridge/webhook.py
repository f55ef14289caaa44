"""The webhook receiver: GitHub's deliveries in, durably, in well under GitHub's 10 s.

``POST /webhook`` checks, in this order, and changes nothing when a check fails:

1. the body is no larger than the configured limit, nor than what the NATS server
   takes in one message (413), and arrives within :data:`BODY_READ_S` (408), with at
   most :data:`MAX_BODIES_READ_AT_ONCE` being read at once (503 past that);
2. ``X-Hub-Signature-256`` is present (401) and is the HMAC-SHA256 of the exact body
   under the shared secret, compared in constant time (401; a header that is not
   ASCII is no signature either);
3. ``X-GitHub-Event`` and ``X-GitHub-Delivery`` are present and well formed (400); a
   delivery id is at most :data:`MAX_DELIVERY_CHARS` characters, so that every fact
   id made from it is a valid id (GitHub's are 36-character GUIDs);
4. the body is JSON: ``Content-Type: application/json`` (415 otherwise, e.g. for a
   webhook set to ``application/x-www-form-urlencoded``);
5. the body is a JSON object (400).

``ping`` is answered at once; events the bridge does not act on are acknowledged and
ignored. A delivery already handled (a redelivery or a replay, also after a restart and
long after JetStream's two-minute duplicate window), or one whose body was (a signed
body replayed under another delivery id or another event header: the signature covers
neither), is acknowledged with no second effect, for as long as the bridge remembers
deliveries (30 days). Only a label event is not known by its body: one replayed is an
old one, superseded by the time order of its label's events. Anything else is published
to the ``AGORA_WEBHOOKS`` stream with ``Nats-Msg-Id`` = the delivery id, and only once
JetStream has acknowledged it does the receiver answer 202; the work happens afterwards
(:mod:`agora.bridge.inbound`). If JetStream cannot take it, the answer is 503 and GitHub
records a failed delivery, which the bridge redelivers when it catches up.

``GET /healthz`` says the process is up; ``GET /readyz`` that NATS and the stream are
reachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Final

from aiohttp import web
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import Secret
from agora.bridge.streams import DELIVERIES_BUCKET, WEBHOOK_STREAM, WEBHOOK_SUBJECT_PREFIX, Buckets
from agora.core.errors import shown
from agora.core.received import MSG_ID_HEADER

log = logging.getLogger(__name__)

HANDLED_EVENTS: Final = frozenset({"issue_comment", "issues"})
# A label event's header and the actions of its body (:func:`is_label_event`).
LABEL_EVENT: Final = "issues"
LABEL_ACTIONS: Final = frozenset({"labeled", "unlabeled"})
SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
EVENT_HEADER: Final = "X-GitHub-Event"
DELIVERY_HEADER: Final = "X-GitHub-Delivery"
JSON_TYPE: Final = "application/json"
# The longest fact id made from a delivery id is ``ev-gh-<delivery>-resumed``, and ids
# are at most 64 characters.
MAX_DELIVERY_CHARS: Final = 50
# Of the NATS server's message size, for the subject and the headers of a delivery.
PUBLISH_HEADROOM_BYTES: Final = 4096
# A body must arrive within GitHub's own time for a delivery, and only so many are read
# at once: a client that sends a body slowly, or never finishes it, holds one place for
# that long at most, and all of them together hold at most this many bodies' memory.
BODY_READ_S: Final = 10.0
MAX_BODIES_READ_AT_ONCE: Final = 32
_DELIVERY: Final = re.compile(rf"[A-Za-z0-9-]{{1,{MAX_DELIVERY_CHARS}}}")
_EVENT: Final = re.compile(r"^[a-z_]{1,64}$")


def signature_of(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_problem(delivery: str) -> str | None:
    """What is wrong with a delivery id, or None if it is well formed."""
    if _DELIVERY.fullmatch(delivery):
        return None
    return (
        f"{DELIVERY_HEADER} must be 1 to {MAX_DELIVERY_CHARS} letters, digits or '-' "
        "(GitHub sends a 36-character GUID)"
    )


def body_key(body: bytes) -> str:
    """The deliveries bucket's key for a delivery's body: GitHub's signature covers the
    body alone, not the delivery id, so a signed body replayed under another id is known
    by this. ``_`` keeps it apart from every delivery id, which has none."""
    return "body_" + hashlib.sha256(body).hexdigest()


def is_label_event(event: str, payload: object) -> bool:
    """Whether a delivery is a label event, by its header and its signed body alike.

    A label event is not known by its body: two of them can be the very same bytes (a
    label added, removed and added again within one second), and each is ordered by
    GitHub's clock instead (:mod:`agora.bridge.labels`), where a replay is an old event,
    superseded. The header alone does not make one: the signature does not cover it, and
    any other signed body posted again as ``issues`` would be a new delivery each time,
    refused each time as a fact.
    """
    return (
        event == LABEL_EVENT
        and isinstance(payload, dict)
        and payload.get("action") in LABEL_ACTIONS
        and isinstance(payload.get("issue"), dict)  # not a pull request's or a discussion's
    )


def handled_keys(event: str, delivery: str, body: bytes, payload: object) -> tuple[str, ...]:
    """The deliveries bucket's keys that say a delivery was handled: its id, then (but
    for a label event) its body's. ``payload`` is the body read as JSON."""
    if is_label_event(event, payload):
        return (delivery,)
    return (delivery, body_key(body))


def body_limit(configured: int, max_payload: int) -> int:
    """The largest body the receiver takes: the configured limit, or less if the NATS
    server could not store a body that large in one message."""
    return min(configured, max_payload - PUBLISH_HEADROOM_BYTES)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _check_content_type(request: web.Request) -> None:
    found = request.headers.get("Content-Type")
    if request.content_type != JSON_TYPE or found is None:
        raise _Refused(
            415,
            f"the content type is {shown(found) if found else 'not given'}: set the "
            f"webhook's content type to {JSON_TYPE} on GitHub",
        )


class WebhookReceiver:
    """The aiohttp application around one NATS connection and one secret."""

    def __init__(
        self,
        *,
        nc: Client,
        secret: Secret,
        max_body_bytes: int,
        working: Callable[[], bool] = lambda: True,
    ) -> None:
        self._nc = nc
        self._buckets = Buckets(nc.jetstream())
        self._secret = secret
        self._max_body = body_limit(max_body_bytes, nc.max_payload)
        self._why_limit = (
            ""
            if self._max_body == max_body_bytes
            else f" (the NATS server takes {nc.max_payload} bytes per message, less "
            f"{PUBLISH_HEADROOM_BYTES} for headers; raise its max_payload to take more)"
        )
        if max_body_bytes > nc.max_payload:  # not only the headroom: a setting to mend
            log.warning(
                "bridge.max_body_bytes is %d; bodies over %d bytes are refused%s",
                max_body_bytes,
                self._max_body,
                self._why_limit,
            )
        self._working = working
        self._reading = asyncio.Semaphore(MAX_BODIES_READ_AT_ONCE)
        self.accepted = 0
        self.refused = 0
        self.duplicates = 0

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post("/webhook", self.receive)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/readyz", self.ready)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def ready(self, _: web.Request) -> web.Response:
        if not self._nc.is_connected:
            return _refuse(503, "not connected to NATS")
        if not self._working():
            return _refuse(503, "the worker behind the receiver is not running")
        try:
            await self._nc.jetstream().stream_info(WEBHOOK_STREAM)
        except Exception as exc:
            return _refuse(503, f"the webhook stream is not reachable: {type(exc).__name__}")
        return web.json_response({"ok": True})

    async def receive(self, request: web.Request) -> web.Response:
        try:
            event, delivery, body, payload = await self._checked(request)
        except _Refused as refused:
            self.refused += 1
            return _refuse(refused.status, refused.message)
        if event == "ping":
            return web.json_response({"ok": True, "pong": delivery})
        if event not in HANDLED_EVENTS:
            return web.json_response({"ignored": event}, status=202)
        return await self._publish(event, delivery, body, payload)

    async def _checked(self, request: web.Request) -> tuple[str, str, bytes, dict[str, object]]:
        """The event, the delivery id, the body and the body read as JSON, or
        :class:`_Refused` saying why not."""
        body = await self._body(request)
        self._check_signature(request, body)
        event = request.headers.get(EVENT_HEADER, "")
        delivery = request.headers.get(DELIVERY_HEADER, "")
        if not _EVENT.match(event):
            raise _Refused(400, f"{EVENT_HEADER} is missing or malformed")
        problem = delivery_problem(delivery)
        if problem is not None:
            raise _Refused(400, problem)
        _check_content_type(request)
        try:
            payload = json.loads(body)
        except ValueError as exc:  # not UTF-8, not JSON, or a number past Python's digit limit
            raise _Refused(400, f"the body is not valid JSON: {exc}") from None
        except RecursionError:  # "[[[[..." nested deeper than the parser goes
            raise _Refused(400, "the body is JSON nested too deeply to be an event") from None
        if not isinstance(payload, dict):
            raise _Refused(400, "the body must be a JSON object")
        return event, delivery, body, payload

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _Refused(
                413,
                f"the body is {request.content_length} bytes; the limit is "
                f"{self._max_body}{self._why_limit}",
            )
        if self._reading.locked():
            raise _Refused(
                503, f"{MAX_BODIES_READ_AT_ONCE} deliveries are being read already; try again"
            )
        try:
            async with self._reading, asyncio.timeout(BODY_READ_S):
                return await request.read()
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {BODY_READ_S:.0f} s") from None
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(
                413, f"the body is over the limit of {self._max_body} bytes{self._why_limit}"
            ) from None

    def _check_signature(self, request: web.Request, body: bytes) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is None:
            raise _Refused(401, f"{SIGNATURE_HEADER} is missing: configure the webhook secret")
        expected = signature_of(self._secret.reveal(), body)
        if not signature.isascii() or not hmac.compare_digest(
            signature.encode(), expected.encode()
        ):
            raise _Refused(401, f"{SIGNATURE_HEADER} does not match the body and the secret")

    async def _seen(self, keys: tuple[str, ...]) -> bool:
        """Whether the delivery was handled: known by its body unless it is a label event
        (the same delivery again has the same body, and so has a replay under another id
        or header), else by its id. One lookup, on the way to the 202; the worker, off
        that path, also looks for the other key (:func:`handled_keys`)."""
        kv = await self._buckets.get(DELIVERIES_BUCKET)
        try:
            await kv.get(keys[-1])
        except KeyNotFoundError:
            return False
        return True

    async def _publish(
        self, event: str, delivery: str, body: bytes, payload: dict[str, object]
    ) -> web.Response:
        js = self._nc.jetstream()
        try:
            if await self._seen(handled_keys(event, delivery, body, payload)):
                self.duplicates += 1
                return web.json_response({"duplicate": delivery}, status=200)
            ack = await js.publish(
                WEBHOOK_SUBJECT_PREFIX + event,
                body,
                headers={MSG_ID_HEADER: delivery, EVENT_HEADER: event, DELIVERY_HEADER: delivery},
            )
        except Exception:
            log.warning("delivery %s could not be stored; answering 503", delivery, exc_info=True)
            return _refuse(503, "the delivery could not be stored; it will be fetched again")
        if ack.duplicate:
            self.duplicates += 1
            return web.json_response({"duplicate": delivery}, status=200)
        self.accepted += 1
        return web.json_response({"accepted": delivery}, status=202)
