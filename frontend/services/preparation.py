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
from maskserve.frontend.domain.images import ImageHandle
from maskserve.frontend.domain.jobs import JobKind, JobStatus, NewJob, Stages
from maskserve.frontend.domain.models import Route
from maskserve.frontend.domain.requests import Prompt, Prompts
from maskserve.frontend.errors import FieldError, NotFound, ValidationFailed, rejection
from maskserve.frontend.ports import ImageBytes
from maskserve.frontend.services.base import Deps, Service, ms_since
from maskserve.frontend.services.handles import ImageHandles
from maskserve.frontend.services.ownership import owned
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.signing import valid_job_id


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None
    data: bytes
    sha256: str | None = None  # hex, when it was hashed as it arrived

    @property
    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Item:
    """One image of a request (uploaded, or named by its handle), with what will produce its alpha."""

    image: Upload | None
    mask: Upload | None = None
    image_id: str | None = None  # the image by its handle instead of an upload

    @property
    def filename(self) -> str | None:
        return None if self.image is None else self.image.filename

    @property
    def size(self) -> int:
        return 0 if self.image is None else len(self.image.data)


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
    load: ImageBytes  # the image's bytes, for the model tier when it does not hold the image
    origin: str  # where the image came from ("file", "image", "image_id"): what an error about its pixels names
    image_id: str | None = None  # its handle (kept for an upload, renewed for a request by handle)
    route: Route | None = None  # the version it runs on (None: only an uploaded mask is used)
    mask_input: np.ndarray | None = None  # an earlier job's logits, fed back (``previous_job_id``)
    stages: Stages = field(default_factory=Stages)  # where its time went (``Server-Timing``)

    def routed(self, route: Route | None) -> None:
        self.route = route
        self.job = replace(self.job, model_version=None if route is None else route.version)


def versions(prepared: list[Prepared]) -> list[str]:
    return [p.route.version for p in prepared if p.route is not None]


class Preparation(Service):
    def __init__(self, deps: Deps, routing: ModelRouting, handles: ImageHandles) -> None:
        super().__init__(deps)
        self.routing = routing
        self.handles = handles

    def _checked(
        self, kind: JobKind, item: Item, prompts: Prompts | None, size: tuple[int, int], digest: str
    ) -> tuple[NewJob, np.ndarray | None]:
        """The prompts inside the image and the uploaded mask of its size; the job to reserve."""
        width, height = size
        if prompts is not None:
            for prompt in prompts.objects:
                check_prompt_bounds(prompt, width, height, "objects" if prompts.several else None)
        mask = None
        if item.mask is not None:
            mask = imaging.decode_mask(item.mask.data, width, height, self.settings.max_pixels)
        job = NewJob(uuid.uuid4().hex, kind, item.filename, item.size, width, height, input_digest=digest)
        return job, mask

    def _decode(self, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """Check the upload; decode its pixels only when this frontend needs them (a cut-out).

        For segmentation the header is enough here (format, size, orientation,
        the pixel limit): the model tier decodes the image, and only when it
        does not hold the image's embeddings already.
        """
        assert item.image is not None
        upload, limit = item.image, self.settings.max_pixels
        digest = upload.digest
        decoded = None
        if kind is not JobKind.EXTRACTION:
            width, height = imaging.probe_image(upload.data, limit, what=upload.field)
        else:
            decoded = imaging.decode_image(upload.data, limit, what=upload.field)
            width, height = decoded.width, decoded.height
        job, mask = self._checked(kind, item, prompts, (width, height), digest)

        async def load() -> bytes:
            return upload.data

        return Prepared(job, item, decoded, width, height, digest, mask, load, upload.field)

    def _decode_kept(
        self, kind: JobKind, item: Item, prompts: Prompts | None, handle: ImageHandle, data: bytes | None
    ) -> Prepared:
        """The image a handle keeps: its size and digest are known; pixels are decoded only for a cut-out."""
        decoded = None if data is None else imaging.decode_image(data, self.settings.max_pixels, what="image_id")
        job, mask = self._checked(kind, item, prompts, (handle.width, handle.height), handle.digest)
        job = replace(job, input_filename=handle.filename, input_bytes=handle.input_bytes)

        async def load() -> bytes:
            return data if data is not None else await self.handles.upload(handle)

        prep = Prepared(job, item, decoded, handle.width, handle.height, handle.digest, mask, load, handle.field)
        prep.image_id = handle.id
        return prep

    async def prepare(self, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """The upload checked (and decoded where this frontend needs its pixels), timed as ``decode``."""
        started = time.perf_counter()
        try:
            prep = await self.cpu(self._decode, kind, item, prompts)
        except ImageRejected as exc:
            raise rejection(exc) from None
        prep.stages.add("decode", ms_since(started))
        return prep

    async def by_handle(self, key: ApiKey, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """The image of this key's handle (renewed); its kept upload is read only for a cut-out's pixels."""
        assert item.image_id is not None
        handle = await self.handles.use(key, item.image_id)
        if kind is not JobKind.EXTRACTION and item.mask is None:  # nothing to decode here: no ``decode`` stage
            return self._decode_kept(kind, item, prompts, handle, None)
        started = time.perf_counter()
        data = await self.handles.upload(handle) if kind is JobKind.EXTRACTION else None
        try:
            prep = await self.cpu(self._decode_kept, kind, item, prompts, handle, data)
        except ImageRejected as exc:
            raise rejection(exc) from None
        prep.stages.add("decode", ms_since(started))
        return prep

    async def keep(self, key: ApiKey, prep: Prepared) -> None:
        """An uploaded image gets its handle (``image_id`` in its result)."""
        upload = prep.item.image
        if upload is not None and prep.image_id is None:
            size = (prep.width, prep.height)
            prep.image_id = await self.handles.keep(key, upload.data, upload.filename, upload.field, prep.digest, size)

    async def prepared(self, key: ApiKey, kind: JobKind, item: Item, prompts: Prompts | None) -> Prepared:
        """One image checked, its handle kept or renewed, the earlier mask it refines found, and routed."""
        if item.image_id is not None:
            prep = await self.by_handle(key, kind, item, prompts)
        else:
            prep = await self.prepare(kind, item, prompts)
            await self.keep(key, prep)
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
