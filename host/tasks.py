"""Stopping a task: a pull loop gracefully between batches, or any task at once."""

from __future__ import annotations

import asyncio
from typing import Any, Final

GRACE_S: Final = 10.0


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
    own cancellation is raised again. Another error ``task`` ended with is raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled, not only the task it ended
