"""Injected failures: queued answers for the next requests that match.

A ``Fault`` matches on the method and a regular expression searched in the path, and is
used ``times`` times, oldest first. It either answers in place of GitHub (a 403 with
``retry-after``, a 429, a spent primary limit, a 5xx, a dropped connection) or, with
``after_apply``, lets the request take effect and then fails it (502 or a dropped
connection), so the caller cannot tell that its write went through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from agora.bridge.standin.limits import (
    PRIMARY_DOCS,
    RATE_LIMIT_DOCS,
    primary_message,
    secondary_message,
)

ANY_PATH: Final = ""
# Placeholders a fault's message may hold, filled in when it is answered.
REQUEST_ID: Final = "{request_id}"
CALLER: Final = "{caller}"
SERVER_ERROR_DOCS: Final = "https://docs.github.com/rest"


@dataclass(frozen=True, slots=True)
class Fault:
    status: int = 502
    message: str = "Server Error"
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str | None = None  # None matches every method
    path: str = ANY_PATH  # a regular expression searched in the request path
    times: int = 1
    after_apply: bool = False  # let the request take effect, then fail it
    drop: bool = False  # close the connection instead of answering
    reset_in_s: float | None = None  # with a spent primary limit: when it resets
    documentation_url: str = SERVER_ERROR_DOCS

    def text(self, *, request_id: str, caller: str) -> str:
        return self.message.replace(REQUEST_ID, request_id).replace(CALLER, caller)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None

    @classmethod
    def secondary_rate_limit(
        cls, *, retry_after: int = 60, method: str | None = None, path: str = ANY_PATH
    ) -> Fault:
        return cls(
            403,
            secondary_message(REQUEST_ID),
            {"retry-after": str(retry_after)},
            method,
            path,
            documentation_url=RATE_LIMIT_DOCS,
        )

    @classmethod
    def too_many_requests(
        cls, *, retry_after: int | None = None, method: str | None = None, path: str = ANY_PATH
    ) -> Fault:
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        return cls(
            429,
            secondary_message(REQUEST_ID),
            headers,
            method,
            path,
            documentation_url=RATE_LIMIT_DOCS,
        )

    @classmethod
    def primary_rate_limit(
        cls, *, reset_in_s: float = 60.0, method: str | None = None, path: str = ANY_PATH
    ) -> Fault:
        """403 with ``x-ratelimit-remaining: 0`` and a reset ``reset_in_s`` from now."""
        return cls(
            403,
            primary_message(CALLER, REQUEST_ID),
            {},
            method,
            path,
            reset_in_s=reset_in_s,
            documentation_url=PRIMARY_DOCS,
        )

    @classmethod
    def server_error(
        cls, status: int = 502, *, method: str | None = None, path: str = ANY_PATH, times: int = 1
    ) -> Fault:
        message = {500: "Server Error", 502: "Server Error", 503: "Service Unavailable"}
        return cls(status, message.get(status, "Server Error"), {}, method, path, times)

    @classmethod
    def disconnect(cls, *, method: str | None = None, path: str = ANY_PATH) -> Fault:
        """Drop the connection before the request takes effect."""
        return cls(method=method, path=path, drop=True)

    @classmethod
    def crash_after_apply(
        cls, *, method: str | None = "POST", path: str = ANY_PATH, drop: bool = True
    ) -> Fault:
        """Let the request take effect, then drop the connection (or answer 502)."""
        return cls(method=method, path=path, after_apply=True, drop=drop)


@dataclass(slots=True)
class FaultQueue:
    pending: list[tuple[Fault, int]] = field(default_factory=list)  # fault, uses left

    def add(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError(f"fault.times must be at least 1, got {fault.times}")
        re.compile(fault.path)
        self.pending.append((fault, fault.times))

    def take(self, method: str, path: str) -> Fault | None:
        for index, (fault, left) in enumerate(self.pending):
            if fault.matches(method, path):
                if left <= 1:
                    del self.pending[index]
                else:
                    self.pending[index] = (fault, left - 1)
                return fault
        return None

    def clear(self) -> None:
        self.pending.clear()
