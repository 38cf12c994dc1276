"""The records the service works with, and the kinds and statuses they take.

Plain dataclasses and enums with no I/O, shared by every layer above: the
store returns them, the services pass them around, the handlers serialise
them. Money rules live with the store (``adapters/store.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

KEY_PREFIX = "sk-live-"
VISIBLE_CHARS = 8  # characters after KEY_PREFIX kept in clear as the key's prefix
ACTIVE_MODEL_VERSION = "active_model_version"
"""Service state: the model version frontends send traffic to (set by ``maskserve models promote``)."""
SIGNING_SECRET = "signing_secret"
"""Service state: the link-signing secret shared by every frontend of one database."""
UPLOADED_MASK = "uploaded-mask"
"""The pseudo model version of work that used only an uploaded mask."""


class JobKind(StrEnum):
    SEGMENTATION = "segmentation"
    EXTRACTION = "extraction"

    @property
    def cost(self) -> int:
        """Credits per image (API.md: segmentation 1, extraction 2)."""
        return {JobKind.SEGMENTATION: 1, JobKind.EXTRACTION: 2}[self]


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


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


class Failure(StrEnum):
    """Why a reserved job failed; decides what a single request answers."""

    UNAVAILABLE = "The inference server is unavailable"
    INTERNAL = "Internal error while processing this image"
    INTERRUPTED = "Interrupted: its frontend stopped"
    RESTARTED = "Interrupted by a server restart"


INSUFFICIENT_CREDITS = "Insufficient credits"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    credits: int
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass
class Job:
    id: str
    key_id: str
    kind: JobKind
    status: JobStatus
    input_filename: str | None
    created_at: float
    batch_id: str | None = None
    reserved: int = 0
    credits_used: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    processing_ms: float | None = None
    original_width: int | None = None
    original_height: int | None = None
    output_width: int | None = None
    output_height: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    output_path: str | None = None
    content_type: str | None = None
    expires_at: float | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class NewJob:
    id: str
    kind: JobKind
    input_filename: str | None
    input_bytes: int | None = None
    original_width: int | None = None
    original_height: int | None = None

    @property
    def cost(self) -> int:
        return self.kind.cost


@dataclass(frozen=True)
class Completion:
    output_path: str
    content_type: str
    output_width: int
    output_height: int
    output_bytes: int
    processing_ms: float
    expires_at: float
    model_version: str | None


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

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


@dataclass
class Segmentation:
    """The model tier's answer to one prompt."""

    needs_image: bool = False  # the replica does not hold the image's embeddings
    rejected: str = ""  # why the model tier could not read the image ("" when it could)
    logits: np.ndarray | None = None  # [256, 256] float32 logits of the chosen mask
    score: float = 0.0  # its predicted IoU
    encoded: bool = False  # the image's bytes were sent, and the encoder ran


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    variant: str
    weights: str

    @property
    def random_weights(self) -> bool:
        return self.weights.startswith("random")


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
