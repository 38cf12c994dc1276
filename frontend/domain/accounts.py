"""API keys, their rate-limit windows and their ``Idempotency-Key`` claims."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "sk-live-"
WEBHOOK_SECRET_PREFIX = "mswh_"
"""A webhook signing secret; ``maskserve keys`` also prints it in the Standard Webhooks ``whsec_`` form."""
VISIBLE_CHARS = 8  # characters after KEY_PREFIX kept in clear as the key's prefix
SIGNING_SECRET = "signing_secret"
"""Service state: the link-signing secret shared by every frontend of one database."""
IDEMPOTENCY_TTL_S = 24 * 3600.0
"""How long a response stays stored under its ``Idempotency-Key`` (API.md v1.1)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    credits: int
    created_at: float
    revoked_at: float | None = None
    pinned_version: str | None = None  # ``maskserve keys pin``: its requests run on this version while loaded

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class RateBucket(StrEnum):
    """Which per-key rate limit a route counts against."""

    SINGLE = "single"
    BATCH = "batch"
    READ = "read"


class LedgerReason(StrEnum):
    INITIAL = "initial"
    TOP_UP = "top-up"
    RESERVE = "reserve"
    RELEASE = "release"


@dataclass(frozen=True)
class RateWindow:
    """A shared sliding window after one request was counted (or refused)."""

    allowed: bool
    hits: int
    oldest: float | None


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window frees a request
    bucket: RateBucket = RateBucket.SINGLE
    window_s: int = 60

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` and the IETF draft's ``RateLimit-Policy``/``RateLimit`` (API.md v1.2)."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f'"{self.bucket.value}";q={self.limit};w={self.window_s}',
            "RateLimit": f'"{self.bucket.value}";r={self.remaining};t={self.reset_s}',
        }


class Claim(StrEnum):
    """What the store says about an ``Idempotency-Key`` a request brings."""

    STARTED = "started"  # new (or expired): this request runs, and its response is stored
    REPLAY = "replay"  # the same request completed: its stored response is sent again
    RUNNING = "running"  # the same request is still running: 409
    MISMATCH = "mismatch"  # the key was used for a different request: 422


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(secret: str) -> str:
    return secret[: len(KEY_PREFIX) + VISIBLE_CHARS]


def hash_key(secret: str) -> str:
    """Keys are 256-bit random, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), stored_hash)


def now() -> float:
    return time.time()
