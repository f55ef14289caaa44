"""A test that hangs fails on its own, and says where it was stuck, instead of stalling the run.

Each test gets ``TEST_LIMIT_S``. When it runs over, the stacks of every asyncio task on the
running loop go to stderr and the test fails with :class:`TestHung`; its teardown then gets
``TEARDOWN_LIMIT_S`` more. Should even that not end it (a hang outside the event loop),
faulthandler prints every thread's stack and ends the run, so the run fails in minutes with
the evidence rather than at the CI's own time limit with none. ``AGORA_TEST_WATCHDOG=0``
turns it off (to sit in a debugger, say).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

TEST_LIMIT_S = 300
TEARDOWN_LIMIT_S = 60
HARD_LIMIT_S = TEST_LIMIT_S + TEARDOWN_LIMIT_S + 60


class TestHung(BaseException):
    """Raised in a test that ran past its time: not an Exception, so that no loop of the
    code under test that logs every Exception and goes on can swallow it."""


_report: list[TextIO] = []


def report_to(fd: int) -> None:
    """Write what the watchdog finds to a copy of ``fd``: pytest captures fd 2 during a
    test, and what it captured is lost if the run has to end."""
    _report[:] = [os.fdopen(os.dup(fd), "w", buffering=1)]


def dump_tasks() -> None:
    """Print the stack of every task on the running event loop, if there is one."""
    if not _report:
        return
    out = _report[0]
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("watchdog: no event loop is running", file=out)
        return
    tasks = list(asyncio.all_tasks(loop))
    print(f"watchdog: {len(tasks)} asyncio tasks", file=out)
    for task in tasks:
        print(f"--- {task.get_name()}: {task.get_coro()!r}", file=out)
        task.print_stack(file=out)
    out.flush()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    dump_tasks()
    if _report:
        faulthandler.dump_traceback(_report[0], all_threads=True)
    signal.alarm(TEARDOWN_LIMIT_S)  # the teardown is stopped the same way if it hangs too
    raise TestHung(f"the test ran past {TEST_LIMIT_S} s; its tasks' stacks are on stderr")


@contextmanager
def watched() -> Iterator[None]:
    """Run the body under the limits above (the main thread only: signals need it)."""
    if os.environ.get("AGORA_TEST_WATCHDOG") == "0":
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    if _report:
        faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True, file=_report[0])
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # an alarm due now is ignored
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
