"""Envelopes this process has already verified or signed, so it checks each only once.

Several agents on one channel each receive the same envelope, and the recorder records
it too; one Ed25519 verification is enough for all of them within a process. Entries are
keyed by the SHA-256 of the exact bytes, so a changed byte is a different envelope; the
subject an envelope arrived on is checked every time. A batch's new envelopes have their
signatures checked together (:mod:`agora.host.signature_checks`), and an envelope whose
check is under way for one reader is waited for, not checked again, by another.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from agora.core.admission import check_arrival, check_signer_may_say
from agora.core.envelope import Act, Fact
from agora.core.errors import InputError
from agora.core.keys import KeyRegistry
from agora.core.signing import Signed, accept_signed, bad_signature, read_envelope
from agora.core.spine import arrival_channel
from agora.host.signature_checks import InlineChecks, SignatureChecks

VOUCHED_MAX: Final = 65536  # a burst the recorder checks well ahead of an agent must stay
VOUCHED_MAX_BYTES: Final = 64 * 1024 * 1024  # of envelopes: a flood of large acts stays bounded
GROUNDED_MAX: Final = 65536


class Vouched:
    """A bounded map from envelope digest to the fact it carries and who signed it."""

    def __init__(
        self,
        registry: KeyRegistry,
        limit: int = VOUCHED_MAX,
        *,
        limit_bytes: int = VOUCHED_MAX_BYTES,
        checks: SignatureChecks | None = None,
    ) -> None:
        self._registry = registry
        self._checks = checks or InlineChecks()
        self._checking: dict[bytes, asyncio.Future[tuple[Fact, str]]] = {}
        self._facts: OrderedDict[bytes, tuple[Fact, str]] = OrderedDict()
        self._sizes: dict[bytes, int] = {}  # each cached envelope's length
        self._cached_bytes = 0
        self._limit = limit
        self._limit_bytes = limit_bytes
        # act id -> envelope digest, for acts whose reply chain this process has seen
        self._grounded: OrderedDict[str, bytes] = OrderedDict()

    def add(self, envelope: bytes, fact: Fact, signer: str) -> None:
        """An envelope this process signed: known, and grounded if it is an act."""
        digest = hashlib.sha256(envelope).digest()
        self._cache(digest, (fact, signer), len(envelope))
        self._ground(fact, digest)

    def grounded(self, act_id: str) -> bool:
        """Whether the recorder will take this act, as far as this process can tell.

        An act is grounded when this process verified or signed it, one envelope only
        carries its id, and it answers nothing or a grounded act. One ``delivered`` or
        ``refused`` event may cover many grounded acts; an act that is not (a reply to
        something never seen here, an id with two envelopes) gets an event of its own,
        so that if the recorder refuses it, no other act's event goes with it.
        """
        return act_id in self._grounded

    def admit_known(
        self, arrivals: Sequence[tuple[bytes, str]]
    ) -> list[tuple[Fact, str] | InputError]:
        """:meth:`admit_all` for the longest run of ``arrivals``, from the first, that
        this process has already verified or signed: nothing to wait for."""
        admitted: list[tuple[Fact, str] | InputError] = []
        for envelope, subject in arrivals:
            known = self._facts.get(hashlib.sha256(envelope).digest())
            if known is None:
                break
            admitted.append(_arrived(known, subject))
        return admitted

    async def admit_all(
        self, arrivals: Sequence[tuple[bytes, str]]
    ) -> list[tuple[Fact, str] | InputError]:
        """For each (envelope, subject it arrived on): its fact and signer, or why it is
        refused. The rules are :func:`~agora.core.admission.admit`'s."""
        results: list[tuple[Fact, str] | InputError | None] = [None] * len(arrivals)
        digests = [hashlib.sha256(envelope).digest() for envelope, _ in arrivals]
        waiting: list[tuple[int, asyncio.Future[tuple[Fact, str]]]] = []
        reading: list[tuple[int, bytes, Signed]] = []
        for index, ((envelope, _), digest) in enumerate(zip(arrivals, digests, strict=True)):
            known = self._facts.get(digest)
            checking = self._checking.get(digest)
            if known is not None:
                results[index] = known
            elif checking is not None:
                waiting.append((index, checking))
            else:
                try:
                    reading.append((index, digest, read_envelope(envelope, self._registry)))
                except Exception as exc:  # every reader gets a refusal
                    results[index] = _refusal(exc)
                    continue
                self._checking[digest] = asyncio.get_running_loop().create_future()
        if reading:
            await self._check(reading, results)
        for index, future in waiting:
            results[index] = await self._wait_for_check(future, arrivals[index])
        admitted = [_arrived(result, arrivals[i][1]) for i, result in enumerate(results)]
        for found, digest in zip(admitted, digests, strict=True):
            if not isinstance(found, InputError):
                self._ground(found[0], digest)
        return admitted

    async def _wait_for_check(
        self, future: asyncio.Future[tuple[Fact, str]], arrival: tuple[bytes, str]
    ) -> tuple[Fact, str] | InputError:
        """The outcome of another reader's check of the same envelope."""
        try:
            return await asyncio.shield(future)
        except InputError as exc:
            return exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or not future.cancelled():
                raise  # this reader itself was cancelled
        # the reader checking it gave up: check it here
        return (await self.admit_all([arrival]))[0]

    async def _check(
        self,
        reading: list[tuple[int, bytes, Signed]],
        results: list[tuple[Fact, str] | InputError | None],
    ) -> None:
        futures = [self._checking[digest] for _, digest, _ in reading]
        try:
            verifies = await self._checks.check([signed for _, _, signed in reading])
            for (index, digest, signed), verified, future in zip(
                reading, verifies, futures, strict=True
            ):
                try:
                    fact = _accepted(signed, verified=verified)
                except Exception as exc:  # every reader gets a refusal
                    refusal = _refusal(exc)
                    results[index] = refusal
                    future.set_exception(refusal)
                    future.exception()  # retrieved: nobody need be waiting for it
                    continue
                known = (fact, signed.signer.name)
                self._cache(digest, known, len(signed.body))
                results[index] = known
                future.set_result(known)
        finally:
            for (_, digest, _), future in zip(reading, futures, strict=True):
                del self._checking[digest]
                if not future.done():
                    future.cancel()  # anyone waiting on it checks it again

    def _cache(self, digest: bytes, known: tuple[Fact, str], size: int) -> None:
        """Keep what was verified, the oldest going first past either limit (a fact is
        about as large as its envelope)."""
        if digest in self._facts:
            return
        self._facts[digest] = known
        self._sizes[digest] = size
        self._cached_bytes += size
        while len(self._facts) > self._limit or self._cached_bytes > self._limit_bytes:
            oldest, _ = self._facts.popitem(last=False)
            self._cached_bytes -= self._sizes.pop(oldest)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def _ground(self, fact: Fact, digest: bytes) -> None:
        """Note an act admitted (or signed) here, for :meth:`grounded`."""
        if not isinstance(fact, Act):
            return
        seen = self._grounded.get(fact.id)
        if seen is not None:
            if seen != digest:  # a second envelope under one id: the recorder keeps one
                del self._grounded[fact.id]
            return
        if fact.in_reply_to is None or fact.in_reply_to in self._grounded:
            self._grounded[fact.id] = digest
            if len(self._grounded) > GROUNDED_MAX:
                self._grounded.popitem(last=False)


def _accepted(signed: Signed, *, verified: bool) -> Fact:
    """The fact of an envelope whose signature was checked, if it may be taken."""
    if not verified:
        raise bad_signature(signed)
    fact = accept_signed(signed).fact
    check_signer_may_say(signed.signer, fact)
    return fact


def _refusal(exc: Exception) -> InputError:
    if isinstance(exc, InputError):
        return exc
    return InputError(f"the message could not be read: {type(exc).__name__}")


def _arrived(
    result: tuple[Fact, str] | InputError | None, subject: str
) -> tuple[Fact, str] | InputError:
    """The arrival rule, checked for each reader: an act on its own channel, an event
    on no channel."""
    if result is None:  # pragma: no cover - every index is filled above
        raise AssertionError("an arrival was left unread")
    if isinstance(result, InputError):
        return result
    try:
        check_arrival(result[0], arrival_channel(subject))
    except InputError as exc:
        return exc
    return result
