"""A stored delivery the inbound worker could not handle: when to try it again, and
what the fact that ends it says.

:class:`Patience` says how long to wait on GitHub and how to space the attempts;
:class:`BadDelivery` is a delivery that is bad input, the same however often it is
read, refused at once rather than tried again. The rest are pure helpers that describe
a delivery in a fact: printable, cut to length, never the secret or the body.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.msg import Msg
from pydantic import ValidationError

from agora.bridge.webhook import DELIVERY_HEADER, EVENT_HEADER
from agora.core.errors import InputError, shown

TEXT_CHARS: Final = 1000
DIGEST_CHARS: Final = 32


class BadDelivery(InputError):
    """A stored delivery that can never be handled, however often it is read."""


@dataclass(frozen=True, slots=True)
class Patience:
    """How long the worker waits on GitHub, and how it retries a delivery.

    A delivery whose handling fails is tried again after ``first_retry_s``, then twice
    as long each time up to ``longest_retry_s``, ``attempts`` times in all (by default
    about an hour: a NATS or GitHub outage of that length loses nothing). A read from
    GitHub made while handling (a label, a permission) waits ``github_read_s`` at most.
    """

    attempts: int = 14
    first_retry_s: float = 2.0
    longest_retry_s: float = 600.0
    github_read_s: float = 3.0

    def retry_after_s(self, attempt: int) -> float:
        """The wait before trying again a delivery that failed ``attempt`` times."""
        return min(self.first_retry_s * 2.0 ** max(attempt - 1, 0), self.longest_retry_s)

    def retrying_s(self) -> float:
        """How long a delivery that keeps failing is tried before it is given up."""
        return sum(self.retry_after_s(attempt) for attempt in range(1, self.attempts))


DEFAULT_PATIENCE: Final = Patience()


def delivery_of(message: Msg) -> str:
    """The delivery id of a stored delivery, printable."""
    return printable((message.headers or {}).get(DELIVERY_HEADER, ""))[:TEXT_CHARS]


def about(message: Msg) -> dict[str, str]:
    """What a fact about a delivery that ends unhandled says of it."""
    headers = message.headers or {}
    metadata = message.metadata
    return {
        "delivery": delivery_of(message),
        "event": printable(headers.get(EVENT_HEADER, ""))[:TEXT_CHARS],
        "stream_seq": str(metadata.sequence.stream),
        "attempts": str(metadata.num_delivered),
    }


def digest(message: Msg) -> str:
    """A short stable name for a delivery, for the id of a fact about it."""
    delivery = (message.headers or {}).get(DELIVERY_HEADER) or (
        f"seq-{message.metadata.sequence.stream}"
    )
    return hashlib.sha256(delivery.encode("utf-8", "backslashreplace")).hexdigest()[:DIGEST_CHARS]


def printable(text: str) -> str:
    """``text`` with anything that is not valid Unicode written as an escape."""
    return text.encode("utf-8", "backslashreplace").decode()


def why(exc: BaseException) -> str:
    """An exception in a sentence, printable and cut to length."""
    return printable(f"{type(exc).__name__}: {exc}")[:TEXT_CHARS]


def parse_problem(event: str, exc: Exception) -> str:
    """Why a stored payload does not parse, without the values in it."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return (
            f"the {shown(event)} payload does not match GitHub's schema: "
            f"{exc.error_count()} problem(s), the first at {where}: {first['msg']}"
        )
    return f"the {shown(event)} payload cannot be read: {exc}"


def stored_json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:  # not UTF-8, not JSON, or a number past Python's digit limit
        raise BadDelivery(f"the stored delivery is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadDelivery("the stored delivery is JSON nested too deeply") from exc
    if not isinstance(value, dict):
        raise BadDelivery("the stored delivery is not a JSON object")
    return value
