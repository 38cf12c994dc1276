"""Preparing an image: everything that can refuse it before credits move (format, size, prompts inside it,
the earlier mask it refines), and the model version it will run on."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np

from maskserve.core.images import ImageRejected
from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.frontend import imaging
from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import JobKind, JobStatus, NewJob, Stages
from maskserve.frontend.domain.models import Route
from maskserve.frontend.domain.requests import Prompt, Prompts
from maskserve.frontend.errors import FieldError, NotFound, ValidationFailed, rejection
from maskserve.frontend.services.base import Deps, Service, ms_since
from maskserve.frontend.services.ownership import owned
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.signing import valid_job_id


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Item:
    """One image of a request, with what will produce its alpha."""

    image: Upload
    mask: Upload | None = None


@dataclass
class Prepared:
    """One image checked and ready to reserve: its job, its size and digest, and the version it runs on."""

    job: NewJob
    item: Item
    decoded: imaging.DecodedImage | None  # None: only the header was read (the model tier decodes)
    width: int
    height: int
    digest: str
    mask: np.ndarray | None
    route: Route | None = None  # the version it runs on (None: only an uploaded mask is used)
    mask_input: np.ndarray | None = None  # an earlier job's logits, fed back (``previous_job_id``)
    stages: Stages = field(default_factory=Stages)  # where its time went (``Server-Timing``)

    def routed(self, route: Route | None) -> None:
        self.route = route
        self.job = replace(self.job, model_version=None if route is None else route.version)


def versions(prepared: list[Prepared]) -> list[str]:
    return [p.route.version for p in prepared if p.route is not None]


class Preparation(Service):
    def __init__(self, deps: Deps, routing: ModelRouting) -> None:
        super().__init__(deps)
        self.routing = routing

    def _decode(self, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """Check the upload; decode its pixels only when this frontend needs them (a cut-out).

        For segmentation the header is enough here (format, size, orientation,
        the pixel limit): the model tier decodes the image, and only when it
        does not hold the image's embeddings already.
        """
        limit = self.settings.max_pixels
        digest = hashlib.sha256(item.image.data).hexdigest()
        decoded = None
        if kind is not JobKind.EXTRACTION:
            width, height = imaging.probe_image(item.image.data, limit, what=item.image.field)
        else:
            decoded = imaging.decode_image(item.image.data, limit, what=item.image.field)
            width, height = decoded.width, decoded.height
        if prompts is not None:
            for prompt in prompts.objects:
                check_prompt_bounds(prompt, width, height, "objects" if prompts.several else None)
        mask = None
        if item.mask is not None:
            mask = imaging.decode_mask(item.mask.data, width, height, limit)
        job = NewJob(
            id=uuid.uuid4().hex,
            kind=kind,
            input_filename=item.image.filename,
            input_bytes=len(item.image.data),
            original_width=width,
            original_height=height,
            input_digest=digest,
        )
        return Prepared(job, item, decoded, width, height, digest, mask)

    async def prepare(self, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """The upload checked (and decoded where this frontend needs its pixels), timed as ``decode``."""
        started = time.perf_counter()
        try:
            prep = await self.cpu(self._decode, kind, item, prompts)
        except ImageRejected as exc:
            raise rejection(exc) from None
        prep.stages.add("decode", ms_since(started))
        return prep

    async def prepared(self, key: ApiKey, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """One image checked, the earlier mask it refines found, and routed: ready to reserve."""
        prep = await self.prepare(kind, item, prompts)
        if prompts is not None and prompts.previous_job_id is not None:
            prep.mask_input = await self.previous_logits(key, prompts.previous_job_id, prep.digest)
        prep.routed(None if item.mask is not None else await self.routing.route(key, prep.digest))
        return prep

    async def previous_logits(self, key: ApiKey, job_id: str, digest: str) -> np.ndarray:
        """The logits of ``job_id``'s mask, if that job is this key's, refinable and on the same image."""
        job = owned(key, await self.store.get_job(job_id) if valid_job_id(job_id) else None, "Job not found")
        logits = job.details.files.logits
        if job.status is not JobStatus.COMPLETED or not logits:
            raise ValidationFailed.one("query", "previous_job_id", "that job has no single mask to refine")
        if job.expires_at is None or job.expires_at < time.time():
            raise NotFound("That job's results have expired")
        if job.input_digest != digest:
            raise ValidationFailed.one("query", "previous_job_id", "that job segmented a different image")
        raw = await self.read_file(logits)
        if raw is None:
            raise NotFound("That job's results have expired")
        return np.frombuffer(raw, np.float32).reshape(1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE).copy()


def check_prompt_bounds(prompt: Prompt, width: int, height: int, name: str | None = None) -> None:
    """Points and box inside the image; ``name``: the parameter that carried them (``objects``), if not their own."""
    errors = []
    pts = prompt.point_array()
    outside = pts is not None and (
        np.any(pts[:, 0] < 0) or np.any(pts[:, 0] > width) or np.any(pts[:, 1] < 0) or np.any(pts[:, 1] > height)
    )
    if outside:
        msg = f"coordinates must lie inside the {width}x{height} image"
        errors.append(FieldError("query", name or "points", msg))
    box = prompt.box_array()
    if box is not None:
        x1, y1, x2, y2 = box
        if min(x1, x2) < 0 or max(x1, x2) > width or min(y1, y2) < 0 or max(y1, y2) > height:
            errors.append(FieldError("query", name or "box", f"box must lie inside the {width}x{height} image"))
    if errors:
        raise ValidationFailed(*errors)
