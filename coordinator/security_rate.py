"""Per-identity rate limit of the security event file.

Refused calls are what any CA-signed caller can produce at will; without a
limit one certificate could fill the disk. Each identity may write a burst
of ``BURST`` events, then one more every ``REFILL_S`` seconds (a token
bucket); the events in between are counted, and the count is written as one
"suppressed N events" line just before that identity's next written event
(or when the daemon stops). At most ``MAX_TRACKED`` identities are
tracked: when room is needed, those whose bucket is full again and owe no
report are forgotten, and if none is, new identities share one bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 20
REFILL_S = 6.0
MAX_TRACKED = 4096
# The key of the shared bucket once MAX_TRACKED identities are tracked.
OVERFLOW = "*"


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0
    since: float = 0.0


@dataclass(frozen=True)
class Suppressed:
    identity: str
    count: int
    since: float  # clock time of the first suppressed event


class IdentityRateLimit:
    def __init__(
        self,
        burst: int = BURST,
        refill_s: float = REFILL_S,
        *,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.burst, self.refill_s = burst, refill_s
        self._max_tracked = max_tracked
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, identity: str) -> tuple[bool, Suppressed | None]:
        """Whether ``identity``'s event may be written now, and the count of
        its events suppressed before it to report first (None if none)."""
        now = self._clock()
        key = self._key(identity)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill_s)
        bucket.at = now
        if bucket.tokens < 1:
            if not bucket.suppressed:
                bucket.since = now
            bucket.suppressed += 1
            return False, None
        bucket.tokens -= 1
        report = None
        if bucket.suppressed:
            report = Suppressed(key, bucket.suppressed, bucket.since)
            bucket.suppressed = 0
        return True, report

    def pending(self) -> list[Suppressed]:
        """Every count not yet reported (to write when stopping); resets them."""
        found = [Suppressed(k, b.suppressed, b.since) for k, b in self._buckets.items() if b.suppressed]
        for bucket in self._buckets.values():
            bucket.suppressed = 0
        return found

    def _key(self, identity: str) -> str:
        if identity in self._buckets or len(self._buckets) < self._max_tracked:
            return identity
        self._prune()
        return identity if len(self._buckets) < self._max_tracked else OVERFLOW

    def _prune(self) -> None:
        """Forget identities whose bucket is full again and owes no report."""
        now = self._clock()
        for key in [
            k
            for k, b in self._buckets.items()
            if not b.suppressed and b.tokens + (now - b.at) / self.refill_s >= self.burst
        ]:
            del self._buckets[key]
