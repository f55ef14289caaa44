"""Ed25519 checks for a whole batch, in a process of their own when there is a core to spare.

Checking a signature is the largest single cost of taking an act in (about 41 µs with
libsodium on a small machine), and the host's event loop runs on one core. With more
than one core, :class:`WorkerChecks` sends each batch's checks to a helper process and
the loop goes on meanwhile: it spends a few µs per signature on the hand-off instead of
41 on the check. The helper receives only public keys, signatures and the
bytes they cover, and answers one boolean per signature; it holds no secret and its
answer is all it can influence.

If the helper dies or does not answer in time, the batch is checked here instead and a
fresh helper is started, so a lost helper slows the host down but never stops it or
lets an unchecked envelope through. :class:`InlineChecks` is the same interface, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final, Protocol

from agora.core.ed25519 import SIGNATURE_BYTES, verifies
from agora.core.signing import Signed
from agora.host.signature_helper import LENGTH, encode_request

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S: Final = 10.0
CHECK_HERE_AT_MOST: Final = 2  # a batch this small is checked in this process
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
    """The helper process ended, stopped answering, or answered out of turn."""


class _Helper:
    """One helper process, the requests it has not answered yet (in the order sent),
    and the task reading its answers. Nothing here outlives the process: when it
    ends, every request still waiting is told so."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._waiting: asyncio.Queue[tuple[int, int, asyncio.Future[bytes]]] = asyncio.Queue()
        self._numbers = itertools.count()
        self._reader = asyncio.create_task(self._read())

    async def ask(self, checks: list[tuple[bytes, bytes, bytes]]) -> bytes:
        stdin = self.process.stdin
        if stdin is None or self._reader.done():
            raise HelperLost("the helper is not running")
        number = next(self._numbers) & 0xFFFFFFFF
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        request = encode_request(number, checks)
        # queued and written with no await between: the pipe keeps the order
        self._waiting.put_nowait((number, len(checks), answer))
        stdin.write(request)
        await stdin.drain()
        return await asyncio.shield(answer)

    async def stop(self, *, wait_s: float) -> None:
        """End the helper: let it finish (``wait_s``), then kill it. The kill happens
        even if this stop is cancelled while it waits."""
        if self.process.stdin is not None:
            self.process.stdin.close()  # the helper exits when its input ends
        try:
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self.process.wait()
        finally:
            self._kill()  # nothing if it ended
            self._reader.cancel()
        await self.process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        current: asyncio.Future[bytes] | None = None
        try:
            while True:
                number, count, current = await self._waiting.get()
                verdicts = await self._answer(number, count)
                if not current.done():
                    current.set_result(verdicts)
                current = None
        except (asyncio.IncompleteReadError, OSError, HelperLost):
            self._kill()  # ended, or out of step with it: nothing more it says counts
        finally:
            lost = HelperLost("the helper ended before answering")
            if current is not None:
                _fail(current, lost)
            while not self._waiting.empty():
                _fail(self._waiting.get_nowait()[2], lost)

    def _kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                self.process.kill()

    async def _answer(self, number: int, count: int) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None  # noqa: S101 - opened with a pipe
        echoed = LENGTH.unpack(await stdout.readexactly(LENGTH.size))[0]
        if echoed != number:
            raise HelperLost(f"the answer to request {echoed} came where {number} was due")
        return await stdout.readexactly(count)


class WorkerChecks:
    """Each batch's signatures checked in a helper process (``signature_helper``)."""

    def __init__(self, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._helper: _Helper | None = None
        self._stopping: set[asyncio.Task[None]] = set()  # helpers being retired
        self._lock = asyncio.Lock()
        self._starting: asyncio.Future[_Helper] | None = None
        self._closed = False
        self.restarts = 0

    def start(self) -> None:
        self._starting = asyncio.ensure_future(self._current())

    @property
    def helper_pid(self) -> int | None:
        """The running helper's process id (None before the first batch or after close)."""
        return None if self._helper is None else self._helper.process.pid

    async def check(self, batch: Sequence[Signed]) -> list[bool]:
        if not batch:
            return []
        checks = [
            (signed.signer.public_key, signed.signature, signed.covered()) for signed in batch
        ]
        if any(len(signature) != SIGNATURE_BYTES for _, signature, _ in checks):
            return check_here(batch)  # no Ed25519 signature: nothing for the helper
        if len(batch) <= CHECK_HERE_AT_MOST:
            return check_here(batch)  # quicker than the round trip to the helper
        helper: _Helper | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                helper = await self._current()
                verdicts = await helper.ask(checks)
        except (HelperLost, OSError, TimeoutError) as exc:
            if not self._closed:
                log.warning("signature helper lost (%s); checking here, starting another", exc)
            if helper is not None:
                self._retire(helper)
            return check_here(batch)
        return [verdict == 1 for verdict in verdicts]

    async def close(self) -> None:
        """Stop the helper, and every helper still being retired; a check after this
        is done in-process."""
        async with self._lock:
            self._closed = True
            helper, self._helper = self._helper, None
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        if helper is not None:
            await helper.stop(wait_s=CLOSE_WAIT_S)
        await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _current(self) -> _Helper:
        """The helper to ask: the running one, or a new one."""
        async with self._lock:
            if self._closed:
                raise HelperLost("the signature checks are closed")
            helper = self._helper
            if helper is not None and helper.process.returncode is None:
                return helper
            if helper is not None:  # it ended between batches
                self._helper = None
                self._retire_now(helper)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                HELPER_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self._helper = _Helper(process)
            return self._helper

    def _retire(self, helper: _Helper) -> None:
        """Stop a helper that failed a batch, unless another batch already did."""
        if self._helper is helper:
            self._helper = None
            self._retire_now(helper)

    def _retire_now(self, helper: _Helper) -> None:
        # a task of its own: a batch that gives up meanwhile cannot leave it running
        self.restarts += 1
        stopping = asyncio.create_task(helper.stop(wait_s=0))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)


def _fail(answer: asyncio.Future[bytes], problem: HelperLost) -> None:
    if not answer.done():
        answer.set_exception(problem)
        answer.exception()  # retrieved: the batch may have given up already


def signature_checks() -> SignatureChecks:
    """A helper process when this process may use more than one core, else inline."""
    if _usable_cores() > 1:
        return WorkerChecks()
    return InlineChecks()


def check_here(batch: Sequence[Signed]) -> list[bool]:
    """Check each signature in this process."""
    return [
        verifies(signed.signer.public_key, signed.signature, signed.covered()) for signed in batch
    ]


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
