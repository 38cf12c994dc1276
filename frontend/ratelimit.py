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


class RateLimiter:
    def __init__(self, limits: dict[str, int], clock=time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def check(self, key_id: str, bucket: str) -> RateDecision:
        """Count one request if the window has room; say how the window stands."""
        limit = self._limits[bucket]
        now = self._clock()
        hits = self._hits.setdefault((key_id, bucket), deque())
        while hits and hits[0] <= now - WINDOW_S:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        remaining = max(0, limit - len(hits))
        reset = 0 if not hits else max(1, math.ceil(hits[0] + WINDOW_S - now))
        return RateDecision(allowed, limit, remaining, reset)
