"""Per-key sliding-window rate limits: in this process, or shared through the store."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping

from maskserve.frontend.domain.accounts import RateBucket, RateDecision
from maskserve.frontend.ports import RateCounter

WINDOW_S = 60.0


def _decision(
    bucket: RateBucket, allowed: bool, limit: int, hits: int, oldest: float | None, now: float
) -> RateDecision:
    reset = 0 if oldest is None else max(1, math.ceil(oldest + WINDOW_S - now))
    return RateDecision(allowed, limit, max(0, limit - hits), reset, bucket, int(WINDOW_S))


class RateLimiter:
    """In this process's memory: exact for one frontend (the embedded default)."""

    def __init__(self, limits: Mapping[RateBucket, int], clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._hits: dict[tuple[str, RateBucket], deque[float]] = {}

    async def check(self, key_id: str, bucket: RateBucket) -> RateDecision:
        """Count one request if the window has room; say how the window stands."""
        limit = self._limits[bucket]
        now = self._clock()
        hits = self._hits.setdefault((key_id, bucket), deque())
        while hits and hits[0] <= now - WINDOW_S:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        return _decision(bucket, allowed, limit, len(hits), hits[0] if hits else None, now)


class SharedRateLimiter:
    """The same sliding window kept in the database, so every frontend counts together."""

    def __init__(self, limits: Mapping[RateBucket, int], counter: RateCounter) -> None:
        self._limits = limits
        self._counter = counter

    async def check(self, key_id: str, bucket: RateBucket) -> RateDecision:
        limit = self._limits[bucket]
        now = time.time()
        window = await self._counter.rate_hit(key_id, bucket.value, limit, WINDOW_S, now)
        return _decision(bucket, window.allowed, limit, window.hits, window.oldest, now)
