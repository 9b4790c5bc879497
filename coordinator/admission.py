"""Attach admission: a token bucket for ``limits.max_attach_qps``.

A burst of up to one second's worth of attaches is admitted at once; beyond
that, attaches are refused (RESOURCE_EXHAUSTED) until tokens refill. Refusal
is immediate and happens before anything is claimed, so a refused Attach
leaves nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``rate`` tokens per second (0 = unlimited); ``burst`` the bucket's
        size (default: one second's worth, at least one)."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._rate = rate
        self._size = burst if burst is not None else max(1.0, rate)
        self._tokens = self._size
        self._clock = clock
        self._stamp = clock()

    @property
    def rate(self) -> float:
        return self._rate

    def try_take(self) -> bool:
        if self._rate == 0:
            return True
        now = self._clock()
        self._tokens = min(self._size, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def give_back(self) -> None:
        """Return a token taken for a call that was answered from its
        idempotency record (a replay costs nothing)."""
        if self._rate:
            self._tokens = min(self._size, self._tokens + 1)
