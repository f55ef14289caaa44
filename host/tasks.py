"""Stopping a pull loop: gracefully between batches, or at once (as a crash would)."""

from __future__ import annotations

import asyncio
from typing import Final

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
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled, not only the task it ended
