"""Per-key sliding-window rate limits, kept in this process's memory."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window frees a request

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


def _decision(allowed: bool, limit: int, hits: int, oldest: float | None, now: float) -> RateDecision:
    reset = 0 if oldest is None else max(1, math.ceil(oldest + WINDOW_S - now))
    return RateDecision(allowed, limit, max(0, limit - hits), reset)


class RateLimiter:
    """In this process's memory: exact for one frontend (the embedded default)."""

    def __init__(self, limits: dict[str, int], clock=time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}

    async def check(self, key_id: str, bucket: str) -> RateDecision:
        """Count one request if the window has room; say how the window stands."""
        limit = self._limits[bucket]
        now = self._clock()
        hits = self._hits.setdefault((key_id, bucket), deque())
        while hits and hits[0] <= now - WINDOW_S:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        return _decision(allowed, limit, len(hits), hits[0] if hits else None, now)


class SharedRateLimiter:
    """The same sliding window kept in PostgreSQL, so every frontend counts together."""

    def __init__(self, limits: dict[str, int], store) -> None:
        self._limits = limits
        self._store = store

    async def check(self, key_id: str, bucket: str) -> RateDecision:
        limit = self._limits[bucket]
        now = time.time()
        allowed, hits, oldest = await self._store.rate_hit(key_id, bucket, limit, WINDOW_S, now)
        return _decision(allowed, limit, hits, oldest, now)
