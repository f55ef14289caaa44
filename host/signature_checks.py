"""Ed25519 checks for a whole batch, in a process of their own when there is a core to spare.

Checking a signature is the largest single cost of taking an act in (about 85 µs with
``cryptography`` on a small machine), and the host's event loop runs on one core. With
more than one core, :class:`WorkerChecks` sends each batch's checks to a helper process
and the loop goes on meanwhile: it spends a few µs per signature on the hand-off
instead of 85 on the check. The helper receives only public keys, signatures and the
bytes they cover, and answers one boolean per signature; it holds no secret and its
answer is all it can influence.

If the helper dies or does not answer in time, the batch is checked here instead and a
fresh helper is started, so a lost helper slows the host down but never stops it or
lets an unchecked envelope through. :class:`InlineChecks` is the same interface, here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature

from agora.core.signing import Signed
from agora.host.signature_helper import encode_request

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S: Final = 10.0
CLOSE_WAIT_S: Final = 2.0
HELPER_MODULE: Final = "agora.host.signature_helper"


class SignatureChecks(Protocol):
    def start(self) -> None:
        """Get ready, so the first batch does not wait (called with the host's start)."""
        ...

    async def check(self, batch: Sequence[Signed]) -> list[bool]:
        """Whether each envelope's signature verifies, in order."""
        ...

    async def close(self) -> None: ...


class InlineChecks:
    """Each signature checked in this process, as the batch's turn comes."""

    def start(self) -> None:
        return None

    async def check(self, batch: Sequence[Signed]) -> list[bool]:
        return check_here(batch)

    async def close(self) -> None:
        return None


class HelperLost(Exception):
    """The helper process ended or stopped answering."""


class WorkerChecks:
    """Each batch's signatures checked in a helper process (``signature_helper``)."""

    def __init__(self, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._answers: asyncio.Queue[tuple[int, asyncio.Future[bytes]]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._spawning = asyncio.Lock()
        self.restarts = 0

    def start(self) -> None:
        self._starting = asyncio.ensure_future(self._helper())

    async def check(self, batch: Sequence[Signed]) -> list[bool]:
        if not batch:
            return []
        request = encode_request(
            [
                (signed.public_key.public_bytes_raw(), signed.signature, signed.covered())
                for signed in batch
            ]
        )
        try:
            process = await self._helper()
            answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            assert process.stdin is not None  # noqa: S101 - opened with a pipe
            self._answers.put_nowait((len(batch), answer))
            process.stdin.write(request)  # in the order the answers are read back
            await process.stdin.drain()
            verdicts = await asyncio.wait_for(asyncio.shield(answer), self._timeout_s)
        except (HelperLost, OSError, TimeoutError) as exc:
            log.warning("signature helper lost (%s); checking here and starting another", exc)
            await self._discard()
            return check_here(batch)
        return [verdict == 1 for verdict in verdicts]

    async def close(self) -> None:
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the helper exits when its input ends
        try:
            await asyncio.wait_for(process.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        await self._stop_reading()

    async def _helper(self) -> asyncio.subprocess.Process:
        async with self._spawning:
            if self._process is not None and self._process.returncode is not None:
                await self._discard()  # it ended between batches
            if self._process is None:
                await self._spawn()
            assert self._process is not None  # noqa: S101 - just spawned
            return self._process

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            HELPER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_answers(self._process))

    async def _read_answers(self, process: asyncio.subprocess.Process) -> None:
        """Hand each answer to the batch that asked, in order."""
        assert process.stdout is not None  # noqa: S101 - opened with a pipe
        while True:
            count, answer = await self._answers.get()
            try:
                verdicts = await process.stdout.readexactly(count)
            except (asyncio.IncompleteReadError, OSError) as exc:
                answer.set_exception(HelperLost(f"the helper ended: {exc}"))
                answer.exception()  # retrieved: the batch may have given up already
                return
            if not answer.done():
                answer.set_result(verdicts)

    async def _discard(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self.restarts += 1
        if process.returncode is None:
            process.kill()
        await process.wait()
        await self._stop_reading()

    async def _stop_reading(self) -> None:
        """Stop the reader; every batch still waiting is told the helper is gone."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        while not self._answers.empty():
            _, answer = self._answers.get_nowait()
            if not answer.done():
                answer.set_exception(HelperLost("the helper was stopped"))
                answer.exception()


def signature_checks() -> SignatureChecks:
    """A helper process when this process may use more than one core, else inline."""
    if len(os.sched_getaffinity(0)) > 1:
        return WorkerChecks()
    return InlineChecks()


def check_here(batch: Sequence[Signed]) -> list[bool]:
    """Check each signature in this process."""
    verdicts: list[bool] = []
    for signed in batch:
        try:
            signed.public_key.verify(signed.signature, signed.covered())
        except InvalidSignature:
            verdicts.append(False)
        else:
            verdicts.append(True)
    return verdicts
