"""How fast the bridge may call GitHub, and how long to wait after a refusal.

GitHub's rules for integrations (see its REST documentation on rate limits):

- content creation (a new comment, a new issue...) at most 80 per minute and 500 per
  hour; :class:`WritePacer` keeps both windows and says how long to wait;
- a rate limit is signalled by a 429, or by a 403 that carries ``retry-after``,
  ``x-ratelimit-remaining: 0`` or the secondary-rate-limit message
  (:func:`is_rate_limited`); any other 403 (a locked issue, "Resource not accessible by
  integration") is a refusal for good and is not retried;
- after a rate limit (and here after a 5xx too): wait ``retry-after`` seconds if given;
  else, if ``x-ratelimit-remaining`` is 0, until ``x-ratelimit-reset``; else at least a
  minute, doubling with each further failure (:func:`retry_delay`); never longer than
  :data:`LONGEST_WAIT_S` (an hour and a minute: GitHub's limits reset within the hour),
  whatever an answer says, so a wrong or hostile ``retry-after`` cannot hold every
  request for good.

A rate limit holds for the whole integration, not for one request: the pacer keeps a
*blocked until* that every request, read or write, waits for (:meth:`WritePacer.block`).

Pure: the caller supplies the time and does the waiting. The pacer's times come from a
monotonic clock; only ``x-ratelimit-reset`` is wall-clock time (seconds since the epoch),
which :func:`retry_delay` turns into a delay.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

MINUTE_S: Final = 60.0
HOUR_S: Final = 3600.0
DEFAULT_PER_MINUTE: Final = 80
DEFAULT_PER_HOUR: Final = 500
MAX_BACKOFF_S: Final = 15 * MINUTE_S
LONGEST_WAIT_S: Final = HOUR_S + MINUTE_S
SERVER_ERRORS: Final = frozenset({500, 502, 503, 504})
# What GitHub says in the body of a 403 that is a secondary rate limit (the older wording
# too), in lower case.
SECONDARY_LIMIT_WORDS: Final = ("secondary rate limit", "abuse detection")


@dataclass(slots=True)
class WritePacer:
    """Sliding one-minute and one-hour windows over content-creating requests, and the
    time until which GitHub asked every request to wait."""

    per_minute: int = DEFAULT_PER_MINUTE
    per_hour: int = DEFAULT_PER_HOUR
    _times: deque[float] = field(default_factory=deque)
    _blocked_until: float = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds to wait before the next write is allowed (0 if it may go now)."""
        self._forget(now)
        waits = [self.blocked_s(now)]
        if len(self._times) >= self.per_hour:
            waits.append(self._times[-self.per_hour] + HOUR_S - now)
        recent = [t for t in self._times if t > now - MINUTE_S]
        if len(recent) >= self.per_minute:
            waits.append(recent[-self.per_minute] + MINUTE_S - now)
        return max(waits)

    def blocked_s(self, now: float) -> float:
        """Seconds any request (a read too) must still wait after a rate limit."""
        return max(self._blocked_until - now, 0.0)

    def block(self, now: float, delay_s: float) -> None:
        """GitHub refused a request for a rate limit: nothing goes for ``delay_s``."""
        self._blocked_until = max(self._blocked_until, now + delay_s)

    def record(self, now: float) -> None:
        self._times.append(now)
        self._forget(now)

    def used(self, now: float, window_s: float) -> int:
        return sum(1 for t in self._times if t > now - window_s)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - HOUR_S:
            self._times.popleft()


def is_rate_limited(status: int, headers: Mapping[str, str], message: str = "") -> bool:
    """Whether a refusal is a rate limit (primary or secondary), by GitHub's signals."""
    if status == 429:
        return True
    if status != 403:
        return False
    lowered = {k.lower(): v for k, v in headers.items()}
    text = message.lower()
    return (
        "retry-after" in lowered
        or lowered.get("x-ratelimit-remaining") == "0"
        or any(words in text for words in SECONDARY_LIMIT_WORDS)
    )


def retry_delay(
    status: int,
    headers: Mapping[str, str],
    *,
    failures: int,
    now_epoch_s: float,
    message: str = "",
) -> float | None:
    """Seconds to wait before retrying a request GitHub refused, or None: do not retry.

    ``failures`` counts the refusals of this request so far (1 after the first);
    ``message`` is GitHub's message in the body of the refusal.
    """
    if status not in SERVER_ERRORS and not is_rate_limited(status, headers, message):
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    after = _number(lowered.get("retry-after"))
    if after is not None:
        return min(max(after, 0.0), LONGEST_WAIT_S)
    if lowered.get("x-ratelimit-remaining") == "0":
        reset = _number(lowered.get("x-ratelimit-reset"))
        if reset is not None:
            return min(max(reset - now_epoch_s, 0.0) + 1.0, LONGEST_WAIT_S)
    backoff: float = MINUTE_S * 2.0 ** max(failures - 1, 0)
    return min(backoff, MAX_BACKOFF_S)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # "inf", "nan": no number of seconds
