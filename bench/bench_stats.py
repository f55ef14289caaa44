"""What the benchmark scripts share: percentiles of timings, and JSON without NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

NS_PER_MS: Final = 1_000_000
NS_PER_S: Final = 1_000_000_000


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread_ms(values_ns: Sequence[int]) -> dict[str, float]:
    values = [v / NS_PER_MS for v in values_ns]
    return {
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values, default=math.nan),
    }


def finite(value: Any) -> Any:
    """``value`` with every NaN (a percentile of nothing) as None, for strict JSON."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
