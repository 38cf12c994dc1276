"""The records the service works with, and the kinds and statuses they take.

Plain dataclasses and enums with no I/O, shared by every layer above: the
store returns them, the services pass them around, the handlers serialise
them. Money rules live with the store (``adapters/store.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from maskserve.core.everything import point_grid
from maskserve.core.prompts import PackedPrompt, pack_prompt
from maskserve.core.signatures import IMAGE_SIZE

KEY_PREFIX = "sk-live-"
VISIBLE_CHARS = 8  # characters after KEY_PREFIX kept in clear as the key's prefix
ACTIVE_MODEL_VERSION = "active_model_version"
"""Service state of older releases: the promoted version (now part of ``MODEL_ROUTING``)."""
MODEL_ROUTING = "model_routing"
"""Service state: which model version serves what (``Routing`` as JSON, set by ``maskserve models``)."""
MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE = 4, 64
"""Segment-everything's grid sizes (API.md, v1.1)."""
SIGNING_SECRET = "signing_secret"
"""Service state: the link-signing secret shared by every frontend of one database."""


class JobKind(StrEnum):
    SEGMENTATION = "segmentation"
    EXTRACTION = "extraction"
    EVERYTHING = "everything"

    @property
    def cost(self) -> int:
        """Credits per image (API.md: segmentation 1 whatever the objects, extraction 2, segment everything 4)."""
        return {JobKind.SEGMENTATION: 1, JobKind.EXTRACTION: 2, JobKind.EVERYTHING: 4}[self]


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
    STORAGE = "The output storage is unavailable"
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
    pinned_version: str | None = None  # ``maskserve keys pin``: its requests run on this version while loaded

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
    details: dict[str, Any] | None = None  # {"result": public extras, "files": {...}}, see services.outputs
    input_digest: str | None = None

    @property
    def extra_files(self) -> list[str]:
        return detail_files(self.details)


def detail_files(details: dict[str, Any] | None) -> list[str]:
    """Locations of a job's files besides its output (objects' masks, refinement logits)."""
    files = (details or {}).get("files", {})
    return [*files.get("objects", []), *([files["logits"]] if files.get("logits") else [])]


@dataclass(frozen=True)
class NewJob:
    id: str
    kind: JobKind
    input_filename: str | None
    input_bytes: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    model_version: str | None = None  # recorded at reservation: what ``models report`` and the drain count
    input_digest: str | None = None

    @property
    def cost(self) -> int:
        return self.kind.cost


@dataclass(frozen=True)
class Deferred:
    """An accepted ``async=true`` request: enough to run its images after a restart (inputs kept in storage)."""

    id: str  # the batch id, or the single job's id
    key_id: str
    kind: JobKind
    batch: bool
    items: list[dict[str, Any]]  # per image to run: job_id, image {field, filename, location}, mask (or None)
    params: str  # JSON of the prompts and options
    webhook_url: str | None
    created_at: float
    base_url: str | None = None  # the origin the request came in on: its webhook's links point there


@dataclass(frozen=True)
class Delivery:
    """A webhook POST owed to a client: retried with backoff until it gets a 2xx or runs out of attempts."""

    id: int
    key_id: str
    url: str
    body: str
    attempts: int


@dataclass(frozen=True)
class BatchRecord:
    id: str
    key_id: str
    job_ids: list[str]
    created_at: float


IDEMPOTENCY_TTL_S = 24 * 3600.0
"""How long a response stays stored under its ``Idempotency-Key`` (API.md v1.1)."""


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


@dataclass
class Stages:
    """Where a request's time went, for ``Server-Timing`` (API.md v1.1): stage → milliseconds, and a note.

    A batch sums each stage over its images.
    """

    durations: dict[str, float | None] = field(default_factory=dict)  # None: a stage with a note only
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, ms: float | None = None, note: str | None = None) -> None:
        before = self.durations.get(name)
        self.durations[name] = ms if before is None else before + (ms or 0.0)
        if note is not None:
            self.notes[name] = note

    def merge(self, other: Stages) -> None:
        for name, ms in other.durations.items():
            self.add(name, ms, other.notes.get(name))

    def header(self) -> str:
        parts = []
        for name, ms in self.durations.items():
            part = name + (f";desc={self.notes[name]}" if name in self.notes else "")
            parts.append(part + (f";dur={ms:.1f}" if ms is not None else ""))
        return ", ".join(parts)


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
    details: dict[str, Any] | None = None


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
    """The model tier's answer to one request: each prompt object's mask, or segment-everything's masks."""

    needs_image: bool = False  # the replica does not hold the image's embeddings
    rejected: str = ""  # why the model tier could not read the image ("" when it could)
    logits: np.ndarray | None = None  # [P, 256, 256] float32 logits of each object's chosen mask
    scores: list[float] = field(default_factory=list)  # their predicted IoU
    encoded: bool = False  # the image's bytes were sent, and the encoder ran
    masks: list[dict[str, Any]] | None = None  # segment-everything: the model tier's masks (RLE, box, scores)
    overrun: tuple[float, float] | None = None  # segment-everything stopped: (s before the grid, s per point)


@dataclass(frozen=True)
class EverythingOptions:
    """``POST …/image-segmentation/everything``'s parameters (API.md, v1.1)."""

    points_per_side: int = 16
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.92
    min_mask_region_area: int = 0
    max_masks: int = 100
    mask_format: str = "rle"


@dataclass(frozen=True)
class EverythingJob:
    """Segment-everything on one image: SAM's point grid over its pixels, and the filters."""

    options: EverythingOptions
    width: int
    height: int
    budget_s: float = 60.0  # the longest the model tier may take (Settings.everything_budget_s)

    def grid(self) -> np.ndarray:
        """[P, 2] pixel coordinates of the grid points (what each mask reports as its ``point``)."""
        return point_grid(self.options.points_per_side) * np.array([self.width, self.height], np.float64)

    def prompts(self) -> list[PackedPrompt]:
        frame = self.grid() / np.array([self.width, self.height], np.float64) * IMAGE_SIZE
        prompts = []
        for point in frame.astype(np.float32):
            coords, labels = pack_prompt(point.reshape(1, 2), np.ones(1, np.int32), None)
            prompts.append(PackedPrompt(coords, labels, None, multimask=True))
        return prompts

    def params(self) -> list[float]:
        """The session model's ``everything`` input."""
        opts = self.options
        return [opts.pred_iou_thresh, opts.stability_score_thresh, float(self.height), float(self.width), self.budget_s]

    def overrun_message(self, before_s: float, per_point_s: float) -> str:
        """Why a grid the model tier stopped is refused, and the largest grid that fits the budget."""
        side = self.options.points_per_side
        points = side * side
        projected = before_s + per_point_s * points
        fits = min(side - 1, math.isqrt(max(0, int((self.budget_s - before_s) / max(per_point_s, 1e-9)))))
        advice = (
            f"points_per_side={fits} or fewer fits"
            if fits >= MIN_POINTS_PER_SIDE
            else "no grid fits at the speed measured now; retry later"
        )
        return (
            f"points_per_side={side} ({points} points) would take about {projected:.0f} s on this deployment, "
            f"over its {self.budget_s:.0f} s limit for one request; {advice}"
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    variant: str
    weights: str

    @property
    def random_weights(self) -> bool:
        return self.weights.startswith("random")


@dataclass(frozen=True)
class Canary:
    """A candidate version taking ``percent`` % of unpinned images (or, with ``shadow``, a copy of them)."""

    version: str
    percent: float
    shadow: bool = False
    started_at: float = 0.0


@dataclass(frozen=True)
class Route:
    version: str  # the version that serves the request
    shadow: str | None = None  # a candidate that gets a copy of it, compared and never billed


def traffic_bucket(digest: str) -> float:
    """Where an image falls in [0, 100): a stable function of its SHA-256, so an image keeps its version."""
    return int(digest[:12], 16) % 10_000 / 100


@dataclass(frozen=True)
class Routing:
    """Which model version serves what, shared by every frontend through the store.

    ``generation`` grows with every change; each frontend reports the
    generation it follows and its requests in flight per version, which is
    how a promotion knows when a version it is about to unload is idle.
    ``retiring`` versions take no new requests (they are being unloaded).
    """

    generation: int = 0
    active: str | None = None  # None: the newest version loaded
    canary: Canary | None = None
    retiring: tuple[str, ...] = field(default_factory=tuple)

    def route(self, pinned: str | None, digest: str, ready: Iterable[str]) -> Route:
        """The version for one image of a key pinned to ``pinned`` (or not), given the versions ready."""
        usable = {v for v in ready if v not in self.retiring}
        if pinned is not None and pinned in usable:
            return Route(pinned)
        base = self.active or (max(usable, key=int) if usable else None)
        if base is None:
            raise LookupError("no model version is ready")
        canary = self.canary
        if canary is None or canary.version not in usable or canary.version == base:
            return Route(base)
        if traffic_bucket(digest) >= canary.percent:
            return Route(base)
        return Route(base, shadow=canary.version) if canary.shadow else Route(canary.version)

    def changed(self, **changes: Any) -> Routing:
        return replace(self, generation=self.generation + 1, **changes)

    def to_json(self) -> str:
        canary = None if self.canary is None else self.canary.__dict__
        return json.dumps(
            {"generation": self.generation, "active": self.active, "canary": canary, "retiring": list(self.retiring)}
        )

    @classmethod
    def from_json(cls, text: str | None, legacy_active: str | None = None) -> Routing:
        if not text:
            return cls(active=legacy_active)
        data = json.loads(text)
        canary = data.get("canary")
        return cls(
            generation=int(data.get("generation", 0)),
            active=data.get("active"),
            canary=Canary(**canary) if canary else None,
            retiring=tuple(data.get("retiring", ())),
        )


@dataclass(frozen=True)
class FrontendReport:
    """What one frontend last told the store: the routing generation it follows, and its work in flight."""

    id: str
    generation: int
    in_flight: dict[str, int]
    seen_at: float


@dataclass(frozen=True)
class ShadowResult:
    """One shadowed prompt: the candidate's mask against the served one (IoU), or the candidate's error."""

    candidate: str
    baseline: str
    iou: float | None
    latency_ms: float
    error: str | None = None


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
