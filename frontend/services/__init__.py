"""Segmentation, extraction and batches: the services layer (no aiohttp, no database or Triton code here).

Every image goes through the same steps: decode and validate (before any
credit moves), reserve its credits, run the models, write the output, then
complete the job (the charge and the stored result in one transaction) or fail
it (the reservation given back). A single request turns a failure into the
contract's status; a batch turns it into that image's failed result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np

from maskserve.core.images import ImageRejected
from maskserve.core.prompts import PackedPrompt, is_multimask, pack_prompt
from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.frontend import imaging
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import (
    ApiKey,
    BatchRecord,
    Completion,
    Deferred,
    EverythingJob,
    EverythingOptions,
    Failure,
    Job,
    JobKind,
    JobStatus,
    ModelInfo,
    NewJob,
    Route,
    Routing,
    Segmentation,
    ShadowResult,
    Stages,
    detail_files,
)
from maskserve.frontend.errors import (
    ApiError,
    FieldError,
    InferenceUnavailable,
    InsufficientCredits,
    NotFound,
    StorageUnavailable,
    Unavailable,
    ValidationFailed,
    rejection,
)
from maskserve.frontend.metrics import Metrics
from maskserve.frontend.ports import InferenceClient, OutputFiles, Store
from maskserve.frontend.services import outputs, params, shapes
from maskserve.frontend.signing import UrlSigner, valid_job_id

log = logging.getLogger("maskserve.frontend")
T = TypeVar("T")
SHADOW_CONCURRENCY = 4
"""Shadow copies running at once; past it a sampled prompt is not shadowed (counted as skipped)."""


@dataclass(frozen=True)
class Prompt:
    points: np.ndarray | None = None  # [N, 2] pixels of the oriented image
    labels: np.ndarray | None = None  # [N] 0/1
    box: np.ndarray | None = None  # [4] x1, y1, x2, y2

    @property
    def given(self) -> bool:
        return self.points is not None or self.box is not None


@dataclass(frozen=True)
class Prompts:
    """What a request segments: one object (``points``/``labels``/``box``) or several (``objects``)."""

    objects: tuple[Prompt, ...] = ()
    several: bool = False  # given as ``objects``: the result lists each one
    mask_format: str = "png"
    previous_job_id: str | None = None  # refine that job's mask

    @property
    def given(self) -> bool:
        return bool(self.objects) and all(o.given for o in self.objects)


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class ExtractionOptions:
    feather: int = 0
    output_format: str = "webp"
    style: imaging.Styling = imaging.Styling()


@dataclass(frozen=True)
class Item:
    """One image of a request, with what will produce its alpha."""

    image: Upload
    mask: Upload | None = None


@dataclass
class _Prepared:
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


@dataclass(frozen=True)
class BatchOutcome:
    batch_id: str
    jobs: list[Job]
    wall_ms: float
    stages: Stages = field(default_factory=Stages)


@dataclass(frozen=True)
class Later:
    """``async=true``: answer 202 at once, run in the background, then tell ``webhook_url`` (if any)."""

    webhook_url: str | None = None
    base_url: str | None = None  # the origin the request came in on: the webhook's links point there


@dataclass(frozen=True)
class Served:
    """A single request's job and where its time went."""

    job: Job
    stages: Stages


class Admission:
    """Bounds the images this process has accepted and not yet answered.

    Past the bound a request is refused at once with 503 (before its credits
    move), so a burst cannot grow queues and memory without limit, and the
    latency of admitted requests stays bounded by the bound over the service
    rate.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0

    def full(self, images: int = 1) -> bool:
        return self.admitted + images > self.limit

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        if self.full(images):
            raise Unavailable("The server is overloaded; retry later")
        self.admitted += images
        try:
            yield
        finally:
            self.admitted -= images


class ImageJobs:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        triton: InferenceClient,
        files: OutputFiles,
        signer: UrlSigner,
        executor: Executor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.triton = triton
        self.files = files
        self.signer = signer
        self._executor = executor
        self._slots = asyncio.Semaphore(settings.inflight_images)
        self.admission = Admission(settings.max_admitted_images)
        self.metrics = metrics or Metrics()
        self.models: list[ModelInfo] | None = None  # the active version's, for /readyz
        self.routing = Routing()  # followed from the store (``maskserve models``)
        self.ready: set[str] = set()  # versions READY in every model, followed from the model tier
        self.variants: dict[str, str] = {}  # version -> model variant, for X-Model-Version
        self.in_flight: Counter[str] = Counter()  # requests (and shadow copies) running, by version
        self._shadows: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()  # accepted asynchronous requests running

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def refresh_models(self) -> list[ModelInfo]:
        """The versions ready, and the provenance of the one unpinned traffic goes to (checked READY)."""
        try:
            self.ready = await self.triton.ready_versions()
            version = self.routing.active or (max(self.ready, key=int) if self.ready else None)
            if version is None:
                raise InferenceUnavailable("no model version is loaded in every model")
            if self.models is None or self.models[0].version != version:
                self.models = await self.triton.model_info(version)
                self.variants[version] = self.models[0].variant
            for ready in self.ready - set(self.variants):
                self.variants[ready] = (await self.triton.model_info(ready))[0].variant
        except InferenceUnavailable:
            self.models = None
            raise
        return self.models

    def model_label(self, version: str) -> str:
        """``variant/version``, as ``X-Model-Version`` shows it."""
        return f"{self.variants.get(version, 'sam2')}/{version}"

    async def _models_known(self) -> None:
        """The versions ready are known (asked of the model tier if not yet); 503 if it cannot say."""
        if self.models is None or not self.ready:
            try:
                await self.refresh_models()
            except InferenceUnavailable as exc:
                raise Unavailable(Failure.UNAVAILABLE) from exc

    async def route(self, key: ApiKey, digest: str) -> Route:
        """The version serving this key's image (its pin, a canary, or the promoted one), and a shadow."""
        await self._models_known()
        try:
            return self.routing.route(key.pinned_version, digest, self.ready)
        except LookupError as exc:
            raise Unavailable(Failure.UNAVAILABLE) from exc

    @contextlib.contextmanager
    def running(self, versions: list[str]) -> Iterator[None]:
        """Count requests in flight per version (reported to the store; a promotion drains on them)."""
        self.in_flight.update(versions)
        try:
            yield
        finally:
            self.in_flight.subtract(versions)

    def in_flight_now(self) -> dict[str, int]:
        return {version: n for version, n in self.in_flight.items() if n > 0}

    async def close(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        if self._background:  # accepted asynchronous work gets the shutdown's grace, then ends refunded
            await asyncio.wait(list(self._background), timeout=self.settings.shutdown_timeout_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- preparation: everything that can be refused before credits move --

    def _decode(self, kind: JobKind, item: Item, prompts: Prompts | None) -> _Prepared:
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
                _check_prompt_bounds(prompt, width, height, "objects" if prompts.several else None)
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
        return _Prepared(job, item, decoded, width, height, digest, mask)

    async def _prepare(self, kind: JobKind, item: Item, prompts: Prompts | None) -> _Prepared:
        started = time.perf_counter()
        try:
            prep = await self._cpu(self._decode, kind, item, prompts)
        except ImageRejected as exc:
            raise rejection(exc) from None
        prep.stages.add("decode", _ms(started))
        return prep

    async def _read(self, location: str) -> bytes | None:
        """A stored file's bytes (whichever storage holds it), or None when it is gone."""
        found = await self.files.get(location)
        if found is None or isinstance(found, bytes):
            return found
        return await asyncio.to_thread(found.read_bytes)

    async def _prepared(self, key: ApiKey, kind: JobKind, item: Item, prompts: Prompts | None) -> _Prepared:
        """One image checked (decoded where needed), the earlier mask it refines found, and routed: ready to reserve."""
        prep = await self._prepare(kind, item, prompts)
        if prompts is not None and prompts.previous_job_id is not None:
            prep.mask_input = await self._previous_logits(key, prompts.previous_job_id, prep.digest)
        prep.routed(None if item.mask is not None else await self.route(key, prep.digest))
        return prep

    async def _previous_logits(self, key: ApiKey, job_id: str, digest: str) -> np.ndarray:
        """The logits of ``job_id``'s mask, if that job is this key's, refinable and on the same image."""
        job = await self.store.get_job(job_id) if valid_job_id(job_id) else None
        if job is None or job.key_id != key.id:
            raise NotFound("Job not found")
        files = (job.details or {}).get("files", {})
        if job.status is not JobStatus.COMPLETED or not files.get("logits"):
            raise ValidationFailed.one("query", "previous_job_id", "that job has no single mask to refine")
        if job.expires_at is None or job.expires_at < time.time():
            raise NotFound("That job's results have expired")
        if job.input_digest != digest:
            raise ValidationFailed.one("query", "previous_job_id", "that job segmented a different image")
        raw = await self._read(files["logits"])
        if raw is None:
            raise NotFound("That job's results have expired")
        return np.frombuffer(raw, np.float32).reshape(1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE).copy()

    # --- running one reserved image ---------------------------------------

    @staticmethod
    def _pack(prep: _Prepared, prompts: Prompts | None) -> list[PackedPrompt]:
        if prompts is None or not prompts.objects:
            raise ValueError("segmenting needs a prompt")
        width, height = prep.width, prep.height
        packed = []
        for prompt in prompts.objects:
            points = None if prompt.points is None else imaging.to_model_frame(prompt.points, width, height)
            box = None if prompt.box is None else imaging.to_model_frame(prompt.box, width, height).reshape(4)
            coords, labels = pack_prompt(points, prompt.labels, box)
            packed.append(PackedPrompt(coords, labels, prep.mask_input, is_multimask(prompt.points, prompt.box)))
        return packed

    async def _ask(
        self, prep: _Prepared, version: str, packed: list[PackedPrompt], job: EverythingJob | None
    ) -> Segmentation:
        """The model tier's answer: each object's mask, or segment-everything's masks."""
        started = time.perf_counter()
        with self.metrics.triton.labels("session").time():
            if job is None:
                answer = await self.triton.segment(prep.digest, prep.item.image.data, packed, version)
            else:
                answer = await self.triton.everything(prep.digest, prep.item.image.data, job, version)
        self.metrics.encodes.labels("yes" if answer.encoded else "no").inc()
        if answer.encoded:  # the encoder ran, and the decoder after it, in one call
            prep.stages.add("encode", _ms(started))
        else:
            prep.stages.add("embeddings", note="cached")
            prep.stages.add("mask", _ms(started))
        if answer.rejected:
            raise ImageRejected(prep.item.image.field, answer.rejected)
        if job is None and (answer.logits is None or len(answer.logits) != len(packed)):
            raise InferenceUnavailable("the model tier answered without a mask per prompt object")
        if job is not None and answer.overrun is not None:
            raise ValidationFailed.one("query", "points_per_side", job.overrun_message(*answer.overrun))
        if job is not None and answer.masks is None:
            raise InferenceUnavailable("the model tier answered without segment-everything's masks")
        return answer

    def _shadow(self, prep: _Prepared, packed: list[PackedPrompt], served: np.ndarray, route: Route) -> None:
        """Send a copy of the prompt to the candidate in the background; never delays or changes the answer."""
        candidate = route.shadow
        assert candidate is not None
        if len(self._shadows) >= SHADOW_CONCURRENCY:
            self.metrics.shadow.labels(candidate, "skipped").inc()
            return
        task = asyncio.ensure_future(self._compare(prep, packed, served, route.version, candidate))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _compare(
        self, prep: _Prepared, packed: list[PackedPrompt], served: np.ndarray, baseline: str, candidate: str
    ) -> None:
        started = time.perf_counter()
        iou, error = None, None
        with self.running([candidate]):
            try:
                answer = await self.triton.segment(prep.digest, prep.item.image.data, packed, candidate)
                if answer.rejected or answer.logits is None or not len(answer.logits):
                    raise InferenceUnavailable(answer.rejected or "the model tier answered without a mask")
                iou = await self._cpu(imaging.mask_iou, served, answer.logits[0], prep.height, prep.width)
            except InferenceUnavailable as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("shadow of job %s on version %s failed", prep.job.id, candidate)
                error = f"{type(exc).__name__}: {exc}"
        result = ShadowResult(candidate, baseline, iou, (time.perf_counter() - started) * 1000, error)
        self.metrics.shadow.labels(candidate, "error" if error else "compared").inc()
        if iou is not None:
            self.metrics.shadow_iou.labels(candidate, baseline).observe(iou)
        try:
            await self.store.record_shadow(result)
        except Exception as exc:  # a comparison is worth less than the store's other work
            log.warning("could not record a shadow comparison: %s", exc)

    def _render(
        self,
        kind: JobKind,
        prep: _Prepared,
        answer: Segmentation | None,
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None,
    ) -> outputs.Rendered:
        """The model tier's answer (or the uploaded mask) → the output image and the result's extras."""
        if kind is JobKind.EVERYTHING:
            assert answer is not None and answer.masks is not None and isinstance(opts, EverythingOptions)
            return outputs.render_everything(answer.masks, EverythingJob(opts, prep.width, prep.height))
        if kind is JobKind.SEGMENTATION:
            assert answer is not None and answer.logits is not None and prompts is not None
            return outputs.render_segmentation(
                answer.logits, answer.scores, prep.height, prep.width, prompts.several, prompts.mask_format
            )
        assert isinstance(opts, ExtractionOptions) and prep.decoded is not None
        if answer is not None and answer.logits is not None:
            alpha = outputs.union(outputs.object_masks(answer.logits, prep.height, prep.width))
        else:
            assert prep.mask is not None
            alpha = prep.mask
        soft = imaging.feather(alpha, opts.feather)
        try:
            styled = imaging.styled_cutout(prep.decoded, soft, opts.style)
        except imaging.NothingToCrop as exc:
            raise ValidationFailed.one("query", "crop", str(exc)) from None
        data = imaging.encode_cutout(styled, opts.output_format)
        return outputs.Rendered(data, opts.output_format, width=styled.width, height=styled.height)

    async def _store(self, job_id: str, rendered: outputs.Rendered) -> tuple[str, dict[str, Any]]:
        """Write the output and the job's further files; → the output's location and the job's details."""
        written: list[str] = []

        async def put(file_id: str, extension: str, data: bytes) -> str:
            written.append(await self.files.put(file_id, extension, data))
            return written[-1]

        try:
            location = await put(job_id, rendered.extension, rendered.data)
            files: dict[str, Any] = {}
            if rendered.objects:
                files["objects"] = [await put(f"{job_id}_{i}", "png", data) for i, data in enumerate(rendered.objects)]
            if rendered.logits is not None:
                files["logits"] = await put(f"{job_id}_logits", "f32", rendered.logits)
        except StorageUnavailable:
            await self._discard(written)
            raise
        return location, {"result": rendered.result, "files": files}

    async def _discard(self, locations: list[str]) -> None:
        """Remove what a failed request wrote, as far as the storage lets us (its expiry takes the rest)."""
        for location in locations:
            with contextlib.suppress(StorageUnavailable):
                await self.files.remove(location)

    async def _run(
        self,
        kind: JobKind,
        prep: _Prepared,
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None,
    ) -> tuple[Job, Failure | ImageRejected | ValidationFailed | None]:
        """Run one reserved image to its end: completed and charged, or failed and refunded (and why)."""
        started = time.perf_counter()
        job_id = prep.job.id
        route = prep.route
        version = None if route is None else route.version
        failure: Failure | ImageRejected | ValidationFailed | None = None
        try:
            async with self._slots:
                answer = None
                if route is not None:
                    everything = None
                    if isinstance(opts, EverythingOptions):
                        everything = EverythingJob(opts, prep.width, prep.height, self.settings.everything_budget_s)
                    packed = [] if everything is not None else self._pack(prep, prompts)
                    answer = await self._ask(prep, route.version, packed, everything)
                    if route.shadow is not None and len(packed) == 1 and answer.logits is not None:
                        self._shadow(prep, packed, answer.logits[0], route)
                rendering = time.perf_counter()
                rendered = await self._cpu(self._render, kind, prep, answer, prompts, opts)
                prep.stages.add("render", _ms(rendering))
            storing = time.perf_counter()
            location, details = await self._store(job_id, rendered)
            done = Completion(
                output_path=location,
                content_type=imaging.OUTPUT_TYPES[rendered.extension],
                output_width=rendered.width or prep.width,
                output_height=rendered.height or prep.height,
                output_bytes=len(rendered.data),
                processing_ms=(time.perf_counter() - started) * 1000,
                expires_at=float(self.signer.expiry()),
                model_version=version,
                details=details,
            )
            if not await self.store.complete_job(job_id, done):
                await self._discard([location, *detail_files(details)])  # never a stored result without its charge
                raise RuntimeError(f"job {job_id} was no longer processing")
            prep.stages.add("store", _ms(storing))
        except InferenceUnavailable as exc:
            log.warning("job %s: %s", job_id, exc)
            failure = Failure.UNAVAILABLE
            await self.store.fail_job(job_id, failure)
        except StorageUnavailable as exc:  # no stored result without its file: failed, refunded
            log.warning("job %s: %s", job_id, exc)
            failure = Failure.STORAGE
            await self.store.fail_job(job_id, failure)
        except ImageRejected as exc:  # the model tier could not read the pixels the header promised
            failure = exc
            await self.store.fail_job(job_id, exc.message)
        except ValidationFailed as exc:  # the model tier measured that this request cannot fit its budget
            failure = exc
            await self.store.fail_job(job_id, str(exc))
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("job %s failed", job_id)
            failure = Failure.INTERNAL
            await asyncio.shield(self.store.fail_job(job_id, failure))
            if isinstance(exc, asyncio.CancelledError):
                raise
        job = await self.store.get_job(job_id)
        assert job is not None
        self.metrics.images.labels(kind.value, job.status.value).inc()
        if version is not None:
            self.metrics.version_requests.labels(version, job.status.value).inc()
            self.metrics.version_latency.labels(version).observe(time.perf_counter() - started)
        if job.status is JobStatus.COMPLETED:
            self.metrics.credits.inc(job.credits_used)
        return job, failure

    # --- public operations -------------------------------------------------

    async def single(
        self,
        key: ApiKey,
        kind: JobKind,
        item: Item,
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None = None,
        later: Later | None = None,
    ) -> Served:
        """Run one image; with ``later``, accept it (checked and reserved) and run it in the background."""
        with self.admission.admit(1):
            return await self._single(key, kind, item, prompts, opts, later)

    async def _single(
        self,
        key: ApiKey,
        kind: JobKind,
        item: Item,
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None,
        later: Later | None = None,
    ) -> Served:
        if item.mask is None:  # Triton away: 503 before decoding
            await self._models_known()
        prep = await self._prepared(key, kind, item, prompts)
        with self.running(_versions([prep])):
            if not (await self.store.reserve_jobs(key.id, None, [prep.job]))[0]:
                raise InsufficientCredits()
            if later is not None:
                await self._defer(key, kind, prep.job.id, False, [prep], prompts, opts, later)
                accepted = await self.store.get_job(prep.job.id)
                assert accepted is not None
                return Served(accepted, prep.stages)
            job, failure = await self._run(kind, prep, prompts, opts)
        if failure in (Failure.UNAVAILABLE, Failure.STORAGE):
            raise Unavailable(failure)
        if isinstance(failure, ImageRejected):
            raise rejection(failure)
        if isinstance(failure, ValidationFailed):
            raise failure
        if job.status is not JobStatus.COMPLETED:
            raise ApiError()
        return Served(job, prep.stages)

    async def batch(
        self,
        key: ApiKey,
        kind: JobKind,
        items: list[Item],
        prompts: Prompts | None,
        opts: ExtractionOptions | None = None,
        later: Later | None = None,
    ) -> BatchOutcome:
        with self.admission.admit(len(items)):
            return await self._batch(key, kind, items, prompts, opts, later)

    async def _batch(
        self,
        key: ApiKey,
        kind: JobKind,
        items: list[Item],
        prompts: Prompts | None,
        opts: ExtractionOptions | None,
        later: Later | None = None,
    ) -> BatchOutcome:
        started = time.perf_counter()
        batch_id = uuid.uuid4().hex
        if any(item.mask is None for item in items):  # Triton away: 503 at once
            await self._models_known()

        async def prepare(item: Item) -> _Prepared | ApiError:
            try:
                return await self._prepare(kind, item, prompts)
            except ApiError as exc:
                return exc

        prepared = await asyncio.gather(*(prepare(item) for item in items))
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        for prep in ready:
            prep.routed(None if prep.mask is not None else await self.route(key, prep.digest))
        with self.running(_versions(ready)):
            return await self._run_batch(key, kind, items, prompts, opts, batch_id, prepared, started, later)

    async def _run_batch(
        self,
        key: ApiKey,
        kind: JobKind,
        items: list[Item],
        prompts: Prompts | None,
        opts: ExtractionOptions | None,
        batch_id: str,
        prepared: list[_Prepared | ApiError],
        started: float,
        later: Later | None = None,
    ) -> BatchOutcome:
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        reserved = await self.store.reserve_jobs(key.id, batch_id, [p.job for p in ready])
        paid = {p.job.id for p, ok in zip(ready, reserved, strict=False) if ok}
        refused: dict[int, str] = {}
        for index, (item, prep) in enumerate(zip(items, prepared, strict=False)):
            if isinstance(prep, ApiError):
                refused[index] = uuid.uuid4().hex
                failed = NewJob(refused[index], kind, item.image.filename, len(item.image.data))
                await self.store.record_failed(key.id, batch_id, failed, _item_error(prep))
        job_ids = [refused[i] if isinstance(p, ApiError) else p.job.id for i, p in enumerate(prepared)]
        await self.store.record_batch(BatchRecord(batch_id, key.id, job_ids, time.time()))
        stages = Stages()
        for prep in ready:
            stages.merge(prep.stages)
        if later is not None:
            to_run = [p for p in ready if p.job.id in paid]
            await self._defer(key, kind, batch_id, True, to_run, prompts, opts, later)
            return BatchOutcome(batch_id, await self.store.get_jobs(job_ids), _ms(started), stages)

        async def run(prep: _Prepared) -> Job:
            job, _ = await self._run(kind, prep, prompts, opts)
            return job

        runs = {p.job.id: asyncio.ensure_future(run(p)) for p in ready if p.job.id in paid}
        if runs:
            await asyncio.wait(runs.values())
        jobs = []
        for index, prep in enumerate(prepared):
            job_id = refused[index] if isinstance(prep, ApiError) else prep.job.id
            if job_id in runs:
                jobs.append(runs[job_id].result())
            else:
                found = await self.store.get_job(job_id)
                assert found is not None
                jobs.append(found)
        stages = Stages()
        for prep in ready:
            stages.merge(prep.stages)
        return BatchOutcome(batch_id, jobs, _ms(started), stages)

    # --- asynchronous requests: accepted now, run in the background, resumed after a restart ---

    async def _defer(
        self,
        key: ApiKey,
        kind: JobKind,
        request_id: str,
        batch: bool,
        preps: list[_Prepared],
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None,
        later: Later,
    ) -> None:
        """Keep the inputs and the request durably, then run its images in the background.

        Output storage away: the reserved images fail and are refunded, and the request gets 503.
        """
        items: list[dict[str, Any]] = []
        written: list[str] = []
        try:
            for prep in preps:
                image, mask = prep.item.image, prep.item.mask
                kept: dict[str, Any] = {"job_id": prep.job.id, "image": None, "mask": None}
                for name, upload, suffix in (("image", image, "input"), ("mask", mask, "inmask")):
                    if upload is not None:
                        written.append(await self.files.put(f"{prep.job.id}_{suffix}", "bin", upload.data))
                        kept[name] = {"field": upload.field, "filename": upload.filename, "location": written[-1]}
                items.append(kept)
        except StorageUnavailable:
            for prep in preps:
                await self.store.fail_job(prep.job.id, Failure.STORAGE)
            await self._discard(written)
            raise Unavailable(Failure.STORAGE) from None
        request = Deferred(
            request_id,
            key.id,
            kind,
            batch,
            items,
            params.encode(prompts, opts),
            later.webhook_url,
            time.time(),
            later.base_url,
        )
        await self.store.save_deferred(request)
        self._in_background(request, preps, prompts, opts)

    def _in_background(
        self,
        request: Deferred,
        preps: list[_Prepared],
        prompts: Prompts | None,
        opts: ExtractionOptions | EverythingOptions | None,
    ) -> None:
        versions = _versions(preps)
        self.in_flight.update(versions)  # counted from now: a promotion's drain waits for these images

        async def finish() -> None:
            try:
                await asyncio.gather(*(self._run(request.kind, prep, prompts, opts) for prep in preps))
                await self._close_deferred(request)
            finally:
                self.in_flight.subtract(versions)

        task = asyncio.ensure_future(finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_deferred(self, request: Deferred) -> None:
        """Every image of the request has ended: its webhook is owed, its kept inputs go."""
        webhook = None
        if request.webhook_url:
            body = json.dumps(await self._final_body(request), separators=(",", ":"))
            webhook = (request.key_id, request.webhook_url, body)
        await self.store.forget_deferred(request.id, webhook)
        await self._discard(
            [kept["location"] for item in request.items for kept in (item["image"], item["mask"]) if kept]
        )

    async def _final_body(self, request: Deferred) -> dict[str, Any]:
        """What ``GET`` answers for the request now that it ended: the job's shape, or the batch's."""
        base = request.base_url or self.settings.public_url.rstrip("/")
        if not request.batch:
            job = await self.store.get_job(request.id)
            assert job is not None
            return shapes.single_body(base, self.signer, job)
        record = await self.store.get_batch(request.id)
        assert record is not None
        jobs = await self.store.get_jobs(record.job_ids)
        return shapes.recorded_batch_body(base, self.signer, record, jobs, time.time())

    async def sweep_deferred(self) -> None:
        """Forget the kept inputs of requests that ended elsewhere (failed by a sweep, or on another frontend)."""
        running = {t for t in self._background if not t.done()}
        if running:
            return  # this frontend's own requests close themselves
        for request in await self.store.list_deferred():
            jobs = await self.store.get_jobs([i["job_id"] for i in request.items])
            if all(j.status is not JobStatus.PROCESSING for j in jobs):
                await self._close_deferred(request)

    async def resume_deferred(self, requests: list[Deferred]) -> int:
        """After a restart: run again every image of these accepted requests still ``processing``; → images resumed."""
        resumed = 0
        for request in requests:
            prompts, opts = params.decode(request.params)
            jobs = {j.id: j for j in await self.store.get_jobs([i["job_id"] for i in request.items])}
            key = await self.store.get_key(request.key_id)
            preps = []
            for item in request.items:
                job = jobs.get(item["job_id"])
                if job is None or job.status is not JobStatus.PROCESSING:
                    continue
                prep = await self._revive(request, item, key, prompts)
                if prep is not None:
                    preps.append(prep)
            if preps:
                resumed += len(preps)
                self._in_background(request, preps, prompts, opts)
            else:
                await self._close_deferred(request)
        return resumed

    async def _revive(
        self, request: Deferred, item: dict[str, Any], key: ApiKey | None, prompts: Prompts | None
    ) -> _Prepared | None:
        """One kept image, prepared again under its job id; a job that cannot run any more fails (refunded)."""
        job_id = item["job_id"]

        async def load(kept: dict[str, Any] | None) -> Upload | None:
            if kept is None:
                return None
            data = await self._read(kept["location"])
            if data is None:
                raise FileNotFoundError(kept["location"])
            return Upload(kept["field"], kept["filename"], data)

        try:
            if key is None:
                raise NotFound("the API key is gone")
            image = await load(item["image"])
            assert image is not None
            prep = await self._prepared(key, request.kind, Item(image, await load(item["mask"])), prompts)
            prep.job = replace(prep.job, id=job_id)
            return prep
        except Exception as exc:
            log.warning("async job %s cannot run again after the restart: %s", job_id, exc)
            await self.store.fail_job(job_id, Failure.RESTARTED)
            return None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _versions(prepared: list[_Prepared]) -> list[str]:
    return [p.route.version for p in prepared if p.route is not None]


def _item_error(error: ApiError) -> str:
    if isinstance(error, ValidationFailed):
        return "; ".join(e.msg for e in error.errors)
    return error.detail


def _check_prompt_bounds(prompt: Prompt, width: int, height: int, name: str | None = None) -> None:
    """Points and box inside the image; ``name``: the parameter that carried them (``objects``), if not their own."""
    errors = []
    if prompt.points is not None:
        pts = prompt.points
        if np.any(pts[:, 0] < 0) or np.any(pts[:, 0] > width) or np.any(pts[:, 1] < 0) or np.any(pts[:, 1] > height):
            msg = f"coordinates must lie inside the {width}x{height} image"
            errors.append(FieldError("query", name or "points", msg))
    if prompt.box is not None:
        x1, y1, x2, y2 = prompt.box
        if min(x1, x2) < 0 or max(x1, x2) > width or min(y1, y2) < 0 or max(y1, y2) > height:
            errors.append(FieldError("query", name or "box", f"box must lie inside the {width}x{height} image"))
    if errors:
        raise ValidationFailed(*errors)
