"""Jobs (one image each), batches, accepted asynchronous requests, and what a job keeps besides its output."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from maskserve.frontend.domain.requests import RequestParams


class JobKind(StrEnum):
    SEGMENTATION = "segmentation"
    EXTRACTION = "extraction"
    EVERYTHING = "everything"
    VIDEO_PROMPT = "video_prompt"
    PROPAGATION = "propagation"

    @property
    def cost(self) -> int:
        """Credits per image (API.md: segmentation 1 whatever the objects, extraction 2, segment everything 4;
        v1.2: a video prompt 1, a propagation 1 per frame, see ``NewJob.credits``)."""
        costs = {JobKind.SEGMENTATION: 1, JobKind.EXTRACTION: 2, JobKind.EVERYTHING: 4, JobKind.VIDEO_PROMPT: 1}
        return costs.get(self, 1)


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class Failure(StrEnum):
    """Why a reserved job failed; decides what a single request answers."""

    UNAVAILABLE = "The inference server is unavailable"
    STORAGE = "The output storage is unavailable"
    INTERNAL = "Internal error while processing this image"
    INTERRUPTED = "Interrupted: its frontend stopped"
    RESTARTED = "Interrupted by a server restart"
    DATABASE = "The database was unavailable"


INSUFFICIENT_CREDITS = "Insufficient credits"


class Record(BaseModel):
    """A record kept as JSON in the store; only the fields that were set are written back."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json(self) -> str:
        return self.model_dump_json(exclude_unset=True)

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class RleMask(Record):
    format: Literal["rle"] = "rle"
    size: list[int]  # [height, width]
    counts: str  # COCO compressed RLE (pycocotools)


class PolygonMask(Record):
    format: Literal["polygons"] = "polygons"
    polygons: list[list[int]]  # outer rings [x1, y1, x2, y2, …] in image pixels
    holes: list[list[int]]


InlineMask = Annotated[RleMask | PolygonMask, Field(discriminator="format")]


class ObjectExtras(Record):
    """One prompt object's description in a result (``objects``; its ``output_url`` is signed on the way out)."""

    index: int
    score: float
    bbox: list[int] | None  # [x, y, w, h]; None when empty
    area: int
    mask: InlineMask | None = None


class EverythingMask(Record):
    """One mask of segment-everything (API.md v1.1)."""

    mask: InlineMask
    bbox: list[int] | None
    area: int
    score: float
    stability_score: float
    point: list[float]


class ResultExtras(Record):
    """What a completed job adds to its result object: score, box, area, inline masks, objects (v1.1), and
    the image's handle (v1.2)."""

    image_id: str | None = None
    score: float | None = None
    bbox: list[int] | None = None
    area: int | None = None
    mask: InlineMask | None = None
    objects: list[ObjectExtras] | None = None
    masks: list[EverythingMask] | None = None


class JobFiles(Record):
    """A job's files besides its output, in the output storage (they expire with it)."""

    objects: list[str] = []  # each object's mask PNG (``objects`` given): file ``<job id>_<index>``
    logits: str | None = None  # the chosen mask's low-res logits, for ``previous_job_id`` (never served)
    preview: str | None = None  # a propagation's preview video: file ``<job id>_preview``

    @property
    def locations(self) -> list[str]:
        return [*self.objects, *([self.logits] if self.logits else []), *([self.preview] if self.preview else [])]


class JobDetails(Record):
    result: ResultExtras = ResultExtras()
    files: JobFiles = JobFiles()


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
    details: JobDetails = field(default_factory=JobDetails)
    input_digest: str | None = None

    @property
    def extra_files(self) -> list[str]:
        return self.details.files.locations


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
    credits: int | None = None  # a cost of its own (a propagation's frames), else the kind's

    @property
    def cost(self) -> int:
        return self.kind.cost if self.credits is None else self.credits


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
    details: JobDetails = field(default_factory=JobDetails)


@dataclass(frozen=True)
class BatchRecord:
    id: str
    key_id: str
    job_ids: list[str]
    created_at: float


class KeptUpload(Record):
    """An accepted request's input, kept in the output storage until the request ends."""

    field: str
    filename: str | None
    location: str


class KeptItem(Record):
    """One image of an accepted request: its job, and where its image (and mask) are kept."""

    job_id: str
    image: KeptUpload | None = None
    mask: KeptUpload | None = None
    image_id: str | None = None  # the image by its handle (kept by the handle, not by the request)

    @property
    def locations(self) -> list[str]:
        return [kept.location for kept in (self.image, self.mask) if kept is not None]


@dataclass(frozen=True)
class Deferred:
    """An accepted ``async=true`` request: enough to run its images after a restart (inputs kept in storage)."""

    id: str  # the batch id, or the single job's id
    key_id: str
    kind: JobKind
    batch: bool
    items: list[KeptItem]
    params: RequestParams
    webhook_url: str | None
    created_at: float
    base_url: str | None = None  # the origin the request came in on: its webhook's links point there

    @property
    def job_ids(self) -> list[str]:
        return [item.job_id for item in self.items]


@dataclass(frozen=True)
class Delivery:
    """A webhook POST owed to a client: retried with backoff until it gets a 2xx or runs out of attempts."""

    id: int
    key_id: str
    url: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Owed:
    """What a request that met a database fault leaves to settle once the database is back (the journal's row).

    A job: refunded if still ``processing``; with ``revoke`` (its client was
    answered 503) also when its completion had committed, for nothing may stay
    charged without a result its client got. ``locations``: the files it wrote
    that no job records, removed unless the job stays completed. An
    ``Idempotency-Key`` (``idempotency``: key id, key) is released.
    """

    job_id: str | None = None
    error: str = ""
    revoke: bool = False
    locations: tuple[str, ...] = ()
    idempotency: tuple[str, str] | None = None
    id: int = 0


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
