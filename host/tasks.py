"""Stopping a task: a pull loop gracefully between batches, or any task at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

GRACE_S: Final = 10.0
# longer than a cleanup may rightly take (a NATS request's timeout is 5 s)
CANCEL_AGAIN_S: Final = 10.0


async def finish(
    task: asyncio.Task[None] | None, stopping: asyncio.Event, *, graceful: bool
) -> None:
    """End ``task``: a graceful stop lets it finish its batch and leave between two;
    otherwise (or if it takes longer than :data:`GRACE_S`) it is cancelled where it is."""
    if task is None:
        return
    stopping.set()
    if graceful:
        done, _ = await asyncio.wait({task}, timeout=GRACE_S)
        if done:
            task.result()
            return
    await cancel(task)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended; its cancellation is not the caller's.

    Not ``task.cancel()`` then ``await task`` under ``suppress(CancelledError)``: a
    caller cancelled while it waits has that cancellation handed on to ``task`` (the
    task it awaits), and the suppress would swallow it, so the caller runs on as if
    never cancelled, and whoever cancelled it waits for it for good. Here the caller's
    own cancellation is raised. And a task that swallowed its cancellation (Python
    3.11's ``asyncio.wait_for`` does, in nats-py too, when what it waits for completes
    at that very moment) is cancelled again every :data:`CANCEL_AGAIN_S` until it ends,
    by the event loop, so even if the caller stops waiting. Another error ``task``
    ended with is raised."""
    await cancel_all([task])


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """:func:`cancel` each of ``tasks`` at once, wait for them all, then raise the first
    error one of them ended with (none is left running because another failed)."""
    running = [t for t in tasks if t is not None]
    for task in running:
        _cancel_until_done(task)
    if running:
        await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.result()  # raises what it failed with


def _cancel_until_done(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        asyncio.get_running_loop().call_later(CANCEL_AGAIN_S, _cancel_until_done, task)
