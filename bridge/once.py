"""The bridge's facts, each published once however often its delivery is handled.

A fact's id comes from GitHub's (the comment's, the delivery's), so handling a delivery
again (the bridge stopped after publishing and before marking it handled, then GitHub
redelivered it or the catch-up found the comment) makes a fact with the same id. Its
bytes must not differ, or the recorder sees two facts under one id, and an act signed
again with a later time passes every host as fresh when the first was processed long
ago. So the signed envelope is kept (in ``agora-bridge-out``, for 30 days: longer than
GitHub redelivers) before it is published, and a second handling publishes those very
bytes: the server drops them within its duplicate window, past it the recorder knows
them, and every host refuses a second copy of an act as stale.

One case more, for an act: a first publish that may never have landed (kept more than
:data:`~agora.core.spine.SAFE_REPUBLISH_MS` before: published again now it would reach
no host as fresh). It is looked for in the stream, and only if it is not there (or got
there too late to be taken as fresh) is it signed again under the present time, kept,
and published under the same id. No first
publish can still land after that look: a bridge that stopped took what it had not
sent with it, and one that lost its connection sends what it kept first, on the same
connection, where the server keeps the first under the id and drops the second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.streams import OUT_BUCKET, Buckets
from agora.core.ids import now_ms
from agora.core.spine import (
    FRESH_FOR_MS,
    SAFE_REPUBLISH_MS,
    STREAM,
    WINDOW_MS,
    ids_in_stream,
    publish_fact,
)

log = logging.getLogger(__name__)

Signer = Callable[[int], bytes]  # the signed envelope of the fact, made at a time (ms)


class OnceOut:
    def __init__(self, js: JetStreamContext, buckets: Buckets) -> None:
        self._js = js
        self._buckets = buckets

    async def publish(self, *, subject: str, ident: str, sign: Signer, act: bool) -> None:
        """Publish the fact ``ident`` on ``subject``: the envelope kept for it if there
        is one, else the one ``sign`` makes now (kept first). ``act``: an act, which
        hosts judge by the time it was signed (events reach no agent)."""
        envelope = await self.envelope(subject=subject, ident=ident, sign=sign, act=act)
        if envelope is not None:
            await publish_fact(self._js, subject=subject, msg_id=ident, envelope=envelope)

    async def envelope(
        self,
        *,
        subject: str,
        ident: str,
        sign: Signer,
        act: bool,
        meant: Callable[[bytes], bool] = lambda _: True,
    ) -> bytes | None:
        """The envelope to publish for ``ident`` (see :meth:`publish`); None for an act
        kept long ago that the stream holds already. A kept envelope that is not
        ``meant`` (not the fact the bridge means to send now) is signed anew."""
        bucket = await self._buckets.get(OUT_BUCKET)
        try:
            kept = _read((await bucket.get(ident)).value or b"")
        except KeyNotFoundError:
            kept = None
        if kept is None or not meant(kept[2]):
            return await self._keep(ident, sign)
        signed_ms, after_seq, envelope = kept
        if not act or now_ms() - signed_ms <= SAFE_REPUBLISH_MS:
            return envelope
        stored = await ids_in_stream(
            self._js,
            subjects=[subject],
            after_seq=after_seq,
            until_ms=now_ms(),
            wanted=[ident],
        )
        if ident in stored:
            if stored[ident] - signed_ms <= FRESH_FOR_MS:
                return None  # there, and in time to be taken as fresh: nothing to send
            # there too late to be taken as fresh (a publish held up more than 90 s):
            # sent again under its id once the server no longer drops that id as a
            # repeat, at most the duplicate window after that late copy was stored
            await asyncio.sleep(max(0, stored[ident] + WINDOW_MS - now_ms()) / 1000)
        log.info("%s never reached the stream: it is signed again", ident)
        return await self._keep(ident, sign)

    async def _keep(self, ident: str, sign: Signer) -> bytes:
        after_seq = (await self._js.stream_info(STREAM)).state.last_seq
        at_ms = now_ms()
        envelope = sign(at_ms)
        record = {
            "signed_ms": at_ms,
            "after_seq": after_seq,
            "envelope": base64.b64encode(envelope).decode(),
        }
        bucket = await self._buckets.get(OUT_BUCKET)
        await bucket.put(ident, json.dumps(record).encode())
        return envelope


def _read(data: bytes) -> tuple[int, int, bytes] | None:
    """A kept envelope: when it was signed, the stream's last sequence before it was
    first published, and its bytes; None if the entry is not one (it is made anew)."""
    try:
        record = json.loads(data)
        return (
            int(record["signed_ms"]),
            int(record["after_seq"]),
            base64.b64decode(record["envelope"], validate=True),
        )
    except (ValueError, KeyError, TypeError):
        return None
