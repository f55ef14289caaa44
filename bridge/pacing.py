"""How fast the bridge may write to GitHub, and how long to wait after a refusal.

GitHub's rules for integrations (see its REST documentation on rate limits):

- content creation (a new comment, a new issue...) at most 80 per minute and 500 per
  hour; :class:`WritePacer` keeps both windows and says how long to wait;
- after a 403 or 429 (and here after a 5xx too): wait ``retry-after`` seconds if given;
  else, if ``x-ratelimit-remaining`` is 0, until ``x-ratelimit-reset``; else at least a
  minute, doubling with each further failure (:func:`retry_delay`).

Pure: the caller supplies the time and does the waiting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

MINUTE_S: Final = 60.0
HOUR_S: Final = 3600.0
DEFAULT_PER_MINUTE: Final = 80
DEFAULT_PER_HOUR: Final = 500
MAX_BACKOFF_S: Final = 15 * MINUTE_S
RETRYABLE: Final = frozenset({403, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class WritePacer:
    """Sliding one-minute and one-hour windows over content-creating requests."""

    per_minute: int = DEFAULT_PER_MINUTE
    per_hour: int = DEFAULT_PER_HOUR
    _times: deque[float] = field(default_factory=deque)

    def wait_s(self, now: float) -> float:
        """Seconds to wait before the next write is allowed (0 if it may go now)."""
        self._forget(now)
        waits = [0.0]
        if len(self._times) >= self.per_hour:
            waits.append(self._times[-self.per_hour] + HOUR_S - now)
        recent = [t for t in self._times if t > now - MINUTE_S]
        if len(recent) >= self.per_minute:
            waits.append(recent[-self.per_minute] + MINUTE_S - now)
        return max(waits)

    def record(self, now: float) -> None:
        self._times.append(now)
        self._forget(now)

    def used(self, now: float, window_s: float) -> int:
        return sum(1 for t in self._times if t > now - window_s)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - HOUR_S:
            self._times.popleft()


def retry_delay(
    status: int, headers: Mapping[str, str], *, failures: int, now_epoch_s: float
) -> float | None:
    """Seconds to wait before retrying a request GitHub refused, or None: do not retry.

    ``failures`` counts the refusals of this request so far (1 after the first).
    """
    if status not in RETRYABLE:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    after = _number(lowered.get("retry-after"))
    if after is not None:
        return max(after, 0.0)
    if lowered.get("x-ratelimit-remaining") == "0":
        reset = _number(lowered.get("x-ratelimit-reset"))
        if reset is not None:
            return max(reset - now_epoch_s, 0.0) + 1.0
    backoff: float = MINUTE_S * 2.0 ** max(failures - 1, 0)
    return min(backoff, MAX_BACKOFF_S)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
