"""An agent's sandbox on a thread of its own, with a watchdog on the wall clock.

wasmtime's epoch deadline stops running WebAssembly, not a blocking WASI call: an agent
that sleeps, or waits in ``wasi:io/poll``, is out of its reach for as long as it asked
to wait, and no host call can interrupt it. So the host contains what it cannot stop:

- each agent is made and called on a thread that belongs to it alone, so a blocked
  agent holds nothing another agent, the recorder or the event loop needs;
- the runner waits for a call no longer than the agent's budget plus :data:`GRACE_S`.
  A call still running then is given up: the agent faults (``blocked``) and is
  quarantined like any other fault, and its thread is left to finish the call alone,
  with a store nothing will touch again;
- while that thread is still held, the agent is not started again (a resume faults it
  at once, and says why), so one agent can hold at most one thread and one store.

Agents that want to wait have ``wake-at-ms`` for it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from agora.host.sandbox import (
    EPOCH_TICK_S,
    INSTANTIATE_TICKS,
    AgentFault,
    GuestContext,
    GuestMessage,
    GuestOutcome,
    Sandbox,
    SandboxLimits,
)

log = logging.getLogger(__name__)

GRACE_S: Final = 1.0  # past the budget that the epoch deadline enforces
START_BUDGET_S: Final = INSTANTIATE_TICKS * EPOCH_TICK_S

T = TypeVar("T")


class AgentThread:
    """One daemon thread that runs an agent's jobs in order.

    A daemon, so that a thread held by a blocked call never keeps the process from
    exiting."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future

    def close(self) -> None:
        """Let the thread end once the job in hand (if any) returns."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


class WatchedSandbox:
    """An agent's sandbox, made and called on the agent's own thread, under a watchdog."""

    def __init__(self, agent: str, factory: Callable[[], Sandbox], limits: SandboxLimits) -> None:
        self.agent = agent
        self._factory = factory
        self._call_budget_s = limits.timeout_ms / 1000 + GRACE_S
        self._thread: AgentThread | None = None
        self._sandbox: Sandbox | None = None
        self._held: Future[Any] | None = None  # a call given up on, maybe still running
        self._held_since = 0.0

    @property
    def ready(self) -> bool:
        return self._sandbox is not None and not self._sandbox.dead

    async def start(self) -> None:
        """Make the sandbox (again, after a fault). Raises :class:`AgentFault`, whatever
        went wrong (a sandbox that cannot be made, a thread that cannot be started), so
        the agent is quarantined and its host goes on."""
        if self._held is not None and not self._held.done():
            held_s = time.monotonic() - self._held_since
            raise AgentFault(
                self.agent,
                "blocked",
                f"its last call has been blocked in a host call for {held_s:.0f} s and "
                "still holds its thread; it can start again once that call returns, "
                "or after the host restarts",
            )
        self._held = None
        self._sandbox = None
        try:
            self._sandbox = await self._run(self._factory, START_BUDGET_S + GRACE_S, "start")
        except AgentFault:
            raise
        except Exception as exc:  # its store, its thread: a fault of this agent's alone
            raise AgentFault(
                self.agent, "start", f"its sandbox could not be made: {type(exc).__name__}: {exc}"
            ) from exc

    async def call(
        self, context: GuestContext, state: bytes, inbox: tuple[GuestMessage, ...]
    ) -> GuestOutcome:
        """Run one batch, starting the sandbox first if it has none or it faulted."""
        if not self.ready:
            await self.start()
        assert self._sandbox is not None  # noqa: S101 - started just above
        sandbox = self._sandbox
        return await self._run(
            lambda: sandbox.call(context, state, inbox), self._call_budget_s, "call"
        )

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()
            self._thread = None

    async def _run(self, job: Callable[[], T], budget_s: float, what: str) -> T:
        if self._thread is None:
            self._thread = AgentThread(f"agora-agent-{self.agent}")
        submitted = self._thread.submit(job)
        try:
            async with asyncio.timeout(budget_s):
                return await asyncio.wrap_future(submitted)
        except TimeoutError:
            self._give_up(submitted)
            raise AgentFault(
                self.agent,
                "blocked",
                f"its {what} did not return within {budget_s:.1f} s: it is blocked in a "
                "host call (such as a sleep) that the deadline cannot interrupt; agents "
                "wait with wake-at-ms instead",
            ) from None

    def _give_up(self, submitted: Future[Any]) -> None:
        log.warning("agent %s: a call is blocked in a host call; its thread is left", self.agent)
        self._held = submitted
        self._held_since = time.monotonic()
        self._sandbox = None
        self.close()
