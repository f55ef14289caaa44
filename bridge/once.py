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
no host as fresh). It is looked for in the stream, and only if it is not there, or got
there too late to be taken as fresh, is the act issued again: signed under the present
time and a new id derived from its own (``<id>-r2``, then ``-r3``), as a host issues an
agent's act again. A new id, because the recorder keeps the late copy under the first
id (every host refused it as stale), and would refuse other bytes under it; and a
first publish that lands after the look changes nothing: stale, it reaches no host.

Whatever is kept under an id is written with a compare-and-set: two bridges handling
one delivery at once keep one envelope, and the one that loses publishes the winner's.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from agora.bridge.streams import OUT_BUCKET, Buckets
from agora.core.errors import AgoraError
from agora.core.ids import new_id, now_ms
from agora.core.received import MSG_ID_HEADER
from agora.core.spine import (
    FRESH_FOR_MS,
    SAFE_REPUBLISH_MS,
    STREAM,
    ids_in_stream,
)

log = logging.getLogger(__name__)

Signer = Callable[[str, int], bytes]  # the signed envelope of the fact under an id, at a time
Meant = Callable[[bytes], bool]  # whether a kept envelope is the fact meant now
KEEP_TRIES: Final = 3
REISSUE_MARK: Final = "-r"
FIRST_REISSUE: Final = 2


@dataclass(frozen=True, slots=True)
class Issued:
    """What stands for a fact: the id it goes out under (its own, or one derived from it
    when an act was issued again), and the envelope to publish (None: it is in the
    stream already, in time to be taken as fresh)."""

    ident: str
    envelope: bytes | None


@dataclass(frozen=True, slots=True)
class Kept:
    """An envelope kept for a fact: when it was signed, the stream's last sequence
    before it was first published, its bytes and the id it went out under."""

    signed_ms: int
    after_seq: int
    envelope: bytes
    ident: str


class OnceOut:
    def __init__(self, js: JetStreamContext, buckets: Buckets) -> None:
        self._js = js
        self._buckets = buckets

    async def publish(self, *, subject: str, ident: str, sign: Signer, act: bool) -> str:
        """Publish the fact ``ident`` on ``subject``: the envelope kept for it if there
        is one, else the one ``sign`` makes now (kept first). ``act``: an act, which
        hosts judge by the time it was signed (events reach no agent). Returns the id
        the fact stands under (``ident``, or the id it was issued again under)."""
        issued = await self.envelope(subject=subject, ident=ident, sign=sign, act=act)
        for _ in range(KEEP_TRIES):
            if issued.envelope is None or await self._went_out(subject, issued):
                return issued.ident
            # The stream holds other bytes under that id: whoever may publish on it took
            # the id first (a bridge's ids follow from GitHub's), and the server dropped
            # the fact as a repeat. It goes out under an id no one can know in advance.
            log.warning("%s was taken in the stream by another message: issued again", ident)
            issued = await self._issue_anew(ident, issued.ident, sign, act=act)
        raise AgoraError(f"{ident!r}: every id it was issued under was taken in the stream")

    async def _went_out(self, subject: str, issued: Issued) -> bool:
        """Publish ``issued``; whether the stream holds it under its id now (a repeat of
        the same bytes counts: it went out before)."""
        assert issued.envelope is not None  # noqa: S101 - checked by the caller
        ack = await self._js.publish(
            subject, issued.envelope, headers={MSG_ID_HEADER: issued.ident}
        )
        if not ack.duplicate:
            return True
        try:
            stored = await self._js.get_msg(ack.stream, ack.seq)  # what the id is held by
        except NotFoundError:  # deleted since: the id is held by nothing the hosts see
            return False
        return stored.data == issued.envelope

    async def _issue_anew(self, ident: str, taken: str, sign: Signer, *, act: bool) -> Issued:
        """The fact signed again under a new random id, kept for ``ident`` in place of
        the one issued under ``taken``; or what another bridge kept in its place
        already (both then publish the same envelope)."""
        for _ in range(KEEP_TRIES):
            bucket = await self._buckets.get(OUT_BUCKET)
            try:
                entry = await bucket.get(ident)
            except KeyNotFoundError:
                last: int | None = None
            else:
                kept = _read(entry.value or b"", ident)
                if kept is not None and kept.ident != taken:
                    return Issued(kept.ident, kept.envelope)
                last = entry.revision
            issued = await self._keep(ident, new_id("act" if act else "ev"), sign, last=last)
            if issued is not None:
                return issued
        raise AgoraError(f"{ident!r} was kept anew by another bridge {KEEP_TRIES} times running")

    async def envelope(
        self,
        *,
        subject: str,
        ident: str,
        sign: Signer,
        act: bool,
        meant: Meant = lambda _: True,
    ) -> Issued:
        """What to publish for ``ident`` (see :meth:`publish`). A kept envelope that is
        not ``meant`` (not the fact the bridge means to send now) is signed anew."""
        for _ in range(KEEP_TRIES):
            issued = await self._issue(subject, ident, sign, act=act, meant=meant)
            if issued is not None:
                return issued
            # another bridge kept an envelope for it meanwhile: that one is read next
        raise AgoraError(f"{ident!r} was kept anew by another bridge {KEEP_TRIES} times running")

    async def _issue(
        self, subject: str, ident: str, sign: Signer, *, act: bool, meant: Meant
    ) -> Issued | None:
        """One try (None: a compare-and-set lost to another bridge)."""
        bucket = await self._buckets.get(OUT_BUCKET)
        try:
            entry = await bucket.get(ident)
        except KeyNotFoundError:
            return await self._keep(ident, ident, sign, last=None)
        kept = _read(entry.value or b"", ident)
        if kept is None or not meant(kept.envelope):
            return await self._keep(ident, ident, sign, last=entry.revision)
        if not act or now_ms() - kept.signed_ms <= SAFE_REPUBLISH_MS:
            return Issued(kept.ident, kept.envelope)
        if await self._taken(subject, kept):
            return Issued(kept.ident, None)  # there, and in time to be taken as fresh
        again = reissued_ident(ident, kept.ident)
        log.info("%s never reached the stream in time: issued again as %s", kept.ident, again)
        return await self._keep(ident, again, sign, last=entry.revision)

    async def _taken(self, subject: str, kept: Kept) -> bool:
        """Whether the kept act is in the stream, stored in time to be taken as fresh (a
        publish held up more than :data:`FRESH_FOR_MS` reached no host), in its own
        bytes (another message published under its id first is not it)."""
        held: dict[str, bytes] = {}
        stored = await ids_in_stream(
            self._js,
            subjects=[subject],
            after_seq=kept.after_seq,
            until_ms=now_ms(),
            wanted=[kept.ident],
            held=held,
        )
        stored_ms = stored.get(kept.ident)
        in_time = stored_ms is not None and stored_ms - kept.signed_ms <= FRESH_FOR_MS
        return in_time and held.get(kept.ident) == kept.envelope

    async def _keep(self, key: str, ident: str, sign: Signer, *, last: int | None) -> Issued | None:
        """Sign the fact under ``ident`` now and keep it under ``key`` by compare-and-set
        (``last``: the revision it replaces; None: there is none). None if another
        bridge kept one first."""
        after_seq = (await self._js.stream_info(STREAM)).state.last_seq
        at_ms = now_ms()
        envelope = sign(ident, at_ms)
        record = {
            "signed_ms": at_ms,
            "after_seq": after_seq,
            "envelope": base64.b64encode(envelope).decode(),
            "ident": ident,
        }
        data = json.dumps(record).encode()
        bucket = await self._buckets.get(OUT_BUCKET)
        try:
            if last is None:
                await bucket.create(key, data)
            else:
                await bucket.update(key, data, last=last)
        except KeyWrongLastSequenceError:
            return None
        return Issued(ident, envelope)


def reissued_ident(ident: str, current: str) -> str:
    """The id an act first published as ``ident``, and last as ``current``, is issued
    again under: ``<ident>-r2``, then ``-r3``, and so on."""
    suffix = current.removeprefix(ident + REISSUE_MARK)
    after = int(suffix) + 1 if current != ident and suffix.isdigit() else FIRST_REISSUE
    return f"{ident}{REISSUE_MARK}{after}"


def _read(data: bytes, ident: str) -> Kept | None:
    """A kept envelope (the id it went out under is ``ident`` if the entry does not say:
    kept before acts were issued again); None if the entry is not one (made anew)."""
    try:
        record = json.loads(data)
        return Kept(
            int(record["signed_ms"]),
            int(record["after_seq"]),
            base64.b64decode(record["envelope"], validate=True),
            str(record.get("ident", ident)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
