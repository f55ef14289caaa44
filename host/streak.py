"""Whether something has been quick lately, to decide where to run it next.

The host runs short work right on its event loop when a hop to a worker thread would
cost more than the work (on a loaded 2-core machine the hop and back takes 0.5-1 ms),
and in a thread when the work may be long, so the loop and everything on it goes on.
"""

from __future__ import annotations

from collections import deque


class QuickStreak:
    """Quick while each of the last ``needed`` runs took at most ``limit_s``."""

    def __init__(self, *, needed: int, limit_s: float, quick_at_start: bool) -> None:
        if needed < 1:
            raise ValueError(f"needed is {needed}: expected at least 1")
        self._limit_s = limit_s
        self._recent: deque[float] = deque(maxlen=needed)
        self._quick_at_start = quick_at_start

    @property
    def quick(self) -> bool:
        if len(self._recent) < (self._recent.maxlen or 0):
            return self._quick_at_start and all(t <= self._limit_s for t in self._recent)
        return max(self._recent) <= self._limit_s

    def observe(self, took_s: float) -> None:
        self._recent.append(took_s)

    def slow(self) -> None:
        """A run that had to stop short counts as slow, however long it took."""
        self._recent.append(float("inf"))
