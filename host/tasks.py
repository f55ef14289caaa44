"""Stopping a task: a pull loop gracefully between batches, or any task at once."""

from __future__ import annotations

import asyncio
from typing import Any, Final

GRACE_S: Final = 10.0
CANCEL_AGAIN_S: Final = 1.0


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
    at that very moment) is cancelled again every :data:`CANCEL_AGAIN_S` until it ends.
    Another error ``task`` ended with is raised."""
    if task is None:
        return
    task.cancel()
    while not (await asyncio.wait({task}, timeout=CANCEL_AGAIN_S))[0]:
        task.cancel()
    if not task.cancelled():
        task.result()  # raises what it failed with
