"""Latency samples -> the summary every table cell is made of."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Milliseconds; percentiles by the nearest-rank method (so a p99 of
    fewer than 100 samples is simply the largest)."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    if not sorted_ms:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def summarize(seconds: Sequence[float]) -> Summary:
    ms = sorted(s * 1000 for s in seconds)
    return Summary(
        n=len(ms),
        p50=percentile(ms, 50),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        mean=sum(ms) / len(ms),
        min=ms[0],
        max=ms[-1],
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when there is nothing to divide by."""
    if denominator <= 0:
        return None
    return numerator / denominator
