"""Fresh fact ids and the wall clock, in the forms facts carry them."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """A unique id such as ``act-3f2a...``: a short kind prefix and 128 random bits."""
    return f"{prefix}-{os.urandom(16).hex()}"


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
