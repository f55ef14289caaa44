"""Stopping tasks: a cancellation meant for the caller is never swallowed on the way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from agora.host import tasks
from agora.host.tasks import cancel, cancel_all

Stopper = Callable[[asyncio.Task[None]], Awaitable[None]]


async def _slow_to_end() -> None:
    """A task that, cancelled, takes a moment to end (a claim released, a socket shut)."""
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.sleep(0.05)


async def fails_when_stopped() -> None:
    """A task that, cancelled, fails."""
    try:
        await asyncio.Event().wait()
    finally:
        raise RuntimeError("could not let go")


async def _tidies_up_then_runs_on(ended: asyncio.Event, stop_inner: Stopper) -> None:
    """Ends its helper task in a ``finally`` (as a context manager's exit does), then
    runs on: only a cancellation can end it."""
    helper = asyncio.create_task(_slow_to_end())
    await asyncio.sleep(0)
    try:
        pass
    finally:
        await stop_inner(helper)
    ended.set()
    await asyncio.Event().wait()


async def _swallowing(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _runs_on_after(stop_inner: Stopper) -> bool:
    """Cancel a task while it waits for its helper to end; whether it ran on after."""
    ended = asyncio.Event()
    outer = asyncio.create_task(_tidies_up_then_runs_on(ended, stop_inner))
    await asyncio.sleep(0.01)  # it waits on its helper now
    outer.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), 0.5)
    ran_on = ended.is_set()
    outer.cancel()  # once more: it is no longer waiting on its helper
    with contextlib.suppress(asyncio.CancelledError):
        await outer
    return ran_on


async def test_a_task_cancelled_while_it_ends_another_is_cancelled_still() -> None:
    assert await _runs_on_after(cancel) is False
    # the pattern it replaces: the first cancellation went to the helper and was lost
    assert await _runs_on_after(_swallowing) is True


async def test_cancel_ends_the_task_and_keeps_its_own_cancellation_to_itself() -> None:
    task = asyncio.create_task(_slow_to_end())
    await asyncio.sleep(0)
    await cancel(task)  # not raised here: the caller was not cancelled
    assert task.cancelled()
    await cancel(None)


async def test_cancel_raises_what_the_task_failed_with() -> None:
    task = asyncio.create_task(fails_when_stopped())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="could not let go"):
        await cancel(task)


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_AGAIN_S", 0.05)
    swallowed = asyncio.Event()

    async def swallows_the_first() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # as Python 3.11's wait_for may, by a race
            swallowed.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(swallows_the_first())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel(task), 5)
    assert swallowed.is_set() and task.cancelled()


async def test_the_task_is_cancelled_again_even_once_its_stopper_gave_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_AGAIN_S", 0.05)

    async def swallows_the_first() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await asyncio.Event().wait()

    task = asyncio.create_task(swallows_the_first())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel(task))
    await asyncio.sleep(0.01)
    stopper.cancel()  # whoever was stopping it is stopped itself
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.wait_for(asyncio.wait({task}), 5)
    assert task.cancelled()


async def test_cancel_all_ends_every_task_before_raising_what_one_failed_with() -> None:
    failing = asyncio.create_task(fails_when_stopped())
    slow = asyncio.create_task(_slow_to_end())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="could not let go"):
        await cancel_all([failing, None, slow])
    assert slow.cancelled()
