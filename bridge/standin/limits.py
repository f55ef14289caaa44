"""GitHub's rate limits: the primary hourly budget and the content-creation limit.

Primary: each token's user, installation or app has ``limit`` requests per hour, from
the first request of the window to ``reset``; every response carries
``x-ratelimit-limit/remaining/reset/used/resource``; once spent, 403 "API rate limit
exceeded" with ``x-ratelimit-remaining: 0``. A 304 costs nothing.

Secondary: content-creating requests (a new issue, a new comment) are counted per
caller over a sliding minute and a sliding hour; more than ``per_minute`` or
``per_hour`` gets 403 with GitHub's secondary-rate-limit message and ``retry-after``.
Pure: the time is an argument.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

HOUR_S: Final = 3600.0
MINUTE_S: Final = 60.0
USER_LIMIT_PER_HOUR: Final = 5000
INSTALLATION_LIMIT_PER_HOUR: Final = 5000
ANONYMOUS_LIMIT_PER_HOUR: Final = 60
CREATIONS_PER_MINUTE: Final = 80
CREATIONS_PER_HOUR: Final = 500
RATE_LIMIT_DOCS: Final = (
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
)
PRIMARY_DOCS: Final = (
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
    "#about-the-primary-rate-limit"
)


def secondary_message(request_id: str) -> str:
    return (
        "You have exceeded a secondary rate limit. Please wait a few minutes before you"
        " try again. If you reach out to GitHub Support for help, please include the"
        f" request ID {request_id}."
    )


def primary_message(who: str, request_id: str) -> str:
    return (
        f"API rate limit exceeded for {who}. If you reach out to GitHub Support for help,"
        f" please include the request ID {request_id}."
    )


@dataclass(slots=True)
class Bucket:
    limit: int
    reset: float
    used: int = 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(math.ceil(self.reset)),
            "x-ratelimit-used": str(self.used),
            "x-ratelimit-resource": "core",
        }


@dataclass(slots=True)
class RateLimits:
    per_minute: int = CREATIONS_PER_MINUTE
    per_hour: int = CREATIONS_PER_HOUR
    buckets: dict[str, Bucket] = field(default_factory=dict)
    creations: dict[str, deque[float]] = field(default_factory=dict)

    def bucket(self, key: str, limit: int, *, now: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None or now >= bucket.reset:
            bucket = Bucket(limit, now + HOUR_S)
            self.buckets[key] = bucket
        return bucket

    def creation_retry_after(self, key: str, *, now: float) -> int | None:
        """Seconds to wait if one more creation now would pass a limit, else None."""
        times = self.creations.setdefault(key, deque())
        while times and times[0] <= now - HOUR_S:
            times.popleft()
        in_minute = [t for t in times if t > now - MINUTE_S]
        if len(in_minute) >= self.per_minute:
            return max(1, math.ceil(in_minute[-self.per_minute] + MINUTE_S - now))
        if len(times) >= self.per_hour:
            return max(1, math.ceil(times[-self.per_hour] + HOUR_S - now))
        return None

    def record_creation(self, key: str, *, now: float) -> None:
        self.creations.setdefault(key, deque()).append(now)


def peak_per_window(times: Iterable[float], window_s: float = MINUTE_S) -> int:
    """The most events that fall in any window of ``window_s`` seconds."""
    ordered = sorted(times)
    peak = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window_s:
            start += 1
        peak = max(peak, end - start + 1)
    return peak
