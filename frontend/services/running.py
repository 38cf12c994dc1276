"""Running one reserved image to its end: the model tier's answer, the output rendered and stored, then the
job completed and charged, or failed and refunded (and why)."""

from __future__ import annotations

import asyncio
import logging
import time

from maskserve.core.images import ImageRejected
from maskserve.core.prompts import PackedPrompt, is_multimask, pack_prompt
from maskserve.core.session_io import SessionAnswer
from maskserve.frontend import imaging
from maskserve.frontend.domain.everything import EverythingJob
from maskserve.frontend.domain.jobs import Completion, Failure, Job, JobDetails, JobFiles, JobKind, JobStatus
from maskserve.frontend.domain.requests import EverythingOptions, ExtractionOptions, Prompts
from maskserve.frontend.errors import DatabaseUnavailable, InferenceUnavailable, StorageUnavailable, ValidationFailed
from maskserve.frontend.services import rendering
from maskserve.frontend.services.base import Deps, Service, ms_since
from maskserve.frontend.services.preparation import Prepared
from maskserve.frontend.services.settlement import Settlements
from maskserve.frontend.services.shadow import Shadows

log = logging.getLogger("maskserve.frontend")

Options = ExtractionOptions | EverythingOptions | None
Renewal = tuple[str, float]
Outcome = Failure | ImageRejected | ValidationFailed | None
"""Why a run failed (what a single request answers), or None when it completed."""


def pack(prep: Prepared, prompts: Prompts | None) -> list[PackedPrompt]:
    """Each prompt object in the model frame, with the earlier mask it refines."""
    if prompts is None or not prompts.objects:
        raise ValueError("segmenting needs a prompt")
    packed = []
    for prompt in prompts.objects:
        points, box = prompt.point_array(), prompt.box_array()
        in_frame = None if points is None else imaging.to_model_frame(points, prep.width, prep.height)
        box_frame = None if box is None else imaging.to_model_frame(box, prep.width, prep.height).reshape(4)
        coords, labels = pack_prompt(in_frame, prompt.label_array(), box_frame)
        packed.append(PackedPrompt(coords, labels, prep.mask_input, is_multimask(points, box)))
    return packed


class Runner(Service):
    def __init__(self, deps: Deps, shadows: Shadows, settlements: Settlements) -> None:
        super().__init__(deps)
        self.inference = deps.inference
        self.shadows = shadows
        self.settlements = settlements
        self._slots = asyncio.Semaphore(deps.settings.inflight_images)

    async def _ask(
        self, prep: Prepared, version: str, packed: list[PackedPrompt], job: EverythingJob | None
    ) -> SessionAnswer:
        """The model tier's answer: each object's mask, or segment-everything's masks."""
        started = time.perf_counter()
        with self.metrics.triton.labels("session").time():
            if job is None:
                answer = await self.inference.segment(prep.digest, prep.load, packed, version)
            else:
                answer = await self.inference.everything(prep.digest, prep.load, job, version)
        self.metrics.encodes.labels("yes" if answer.encoded else "no").inc()
        if answer.encoded:  # the encoder ran, and the decoder after it, in one call
            prep.stages.add("encode", ms_since(started))
        else:
            prep.stages.add("embeddings", note="cached")
            prep.stages.add("mask", ms_since(started))
        if answer.rejected:
            raise ImageRejected(prep.origin, answer.rejected)
        if job is None and (answer.logits is None or len(answer.logits) != len(packed)):
            raise InferenceUnavailable("the model tier answered without a mask per prompt object")
        if job is not None and answer.overrun is not None:
            raise ValidationFailed.one("query", "points_per_side", job.overrun_message(*answer.overrun))
        if job is not None and answer.masks is None:
            raise InferenceUnavailable("the model tier answered without segment-everything's masks")
        return answer

    def _render(
        self, kind: JobKind, prep: Prepared, answer: SessionAnswer | None, prompts: Prompts | None, opts: Options
    ) -> rendering.Rendered:
        """The model tier's answer (or the uploaded mask) → the output image and the result's extras."""
        if kind is JobKind.EVERYTHING:
            assert answer is not None and answer.masks is not None and isinstance(opts, EverythingOptions)
            return rendering.render_everything(answer.masks, EverythingJob(opts, prep.width, prep.height))
        if kind is JobKind.SEGMENTATION:
            assert answer is not None and answer.logits is not None and prompts is not None
            return rendering.render_segmentation(
                answer.logits, answer.scores, prep.height, prep.width, prompts.several, prompts.mask_format
            )
        assert isinstance(opts, ExtractionOptions) and prep.decoded is not None
        logits = answer.logits if answer is not None else None
        return rendering.render_cutout(prep.decoded, logits, prep.mask, opts)

    async def _store(self, job_id: str, rendered: rendering.Rendered, written: list[str]) -> tuple[str, JobDetails]:
        """Write the output and the job's further files (each added to ``written``); → the output's location and
        the job's details."""

        async def put(file_id: str, extension: str, data: bytes) -> str:
            written.append(await self.files.put(file_id, extension, data))
            return written[-1]

        files = [(job_id, rendered.extension, rendered.data)]
        files += [(f"{job_id}_{i}", "png", data) for i, data in enumerate(rendered.objects)]
        if rendered.logits is not None:
            files.append((f"{job_id}_logits", "f32", rendered.logits))
        # written side by side; every write ends before a failure is raised, so none outlives the discard
        results = await asyncio.gather(*(put(*file) for file in files), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.discard(written)
            raise failed[0]
        locations = [str(r) for r in results]
        logits = locations.pop() if rendered.logits is not None else None
        return locations[0], JobDetails(result=rendered.result, files=JobFiles(objects=locations[1:], logits=logits))

    async def _produce(
        self, kind: JobKind, prep: Prepared, prompts: Prompts | None, opts: Options, written: list[str]
    ) -> Completion:
        started = time.perf_counter()
        route = prep.route
        async with self._slots:
            answer = None
            if route is not None:
                everything = None
                if isinstance(opts, EverythingOptions):
                    everything = EverythingJob(opts, prep.width, prep.height, self.settings.everything_budget_s)
                packed = [] if everything is not None else pack(prep, prompts)
                answer = await self._ask(prep, route.version, packed, everything)
                if route.shadow is not None and len(packed) == 1 and answer.logits is not None:
                    self.shadows.send(prep, packed, answer.logits[0], route)
            rendering_started = time.perf_counter()
            rendered = await self.cpu(self._render, kind, prep, answer, prompts, opts)
            prep.stages.add("render", ms_since(rendering_started))
        storing = time.perf_counter()
        if prep.image_id is not None:  # its handle, in the result (API.md v1.2)
            rendered.result = rendered.result.model_copy(update={"image_id": prep.image_id})
        location, details = await self._store(prep.job.id, rendered, written)
        prep.stages.add("store", ms_since(storing))
        return Completion(
            output_path=location,
            content_type=imaging.OUTPUT_TYPES[rendered.extension],
            output_width=rendered.width or prep.width,
            output_height=rendered.height or prep.height,
            output_bytes=len(rendered.data),
            processing_ms=ms_since(started),
            expires_at=float(self.deps.signer.expiry()),
            model_version=None if route is None else route.version,
            details=details,
        )

    async def run_now(
        self, key_id: str, kind: JobKind, prep: Prepared, prompts: Prompts | None, opts: Options, renew: Renewal | None
    ) -> tuple[Job | None, Outcome, int | None]:
        """``_run_now``; a database fault is answered 503, so its job is revoked once the database is back,
        even if the commit went through (``DatabaseUnavailable`` raised)."""
        written: list[str] = []
        try:
            return await self._run_now(key_id, kind, prep, prompts, opts, renew, written)
        except DatabaseUnavailable:
            await self.settlements.owe_jobs([prep.job.id], revoke=True, locations=written)
            raise

    async def _run_now(
        self,
        key_id: str,
        kind: JobKind,
        prep: Prepared,
        prompts: Prompts | None,
        opts: Options,
        renew: Renewal | None,
        written: list[str],
    ) -> tuple[Job | None, Outcome, int | None]:
        """A single request's image, run without a reservation: charged and stored in one transaction at the end
        (with its handle's renewal); → (the job, why it failed, the balance after). No job and no failure: the
        balance no longer paid (nothing charged, the outputs removed). A failure is recorded, uncharged."""
        started, at = time.perf_counter(), time.time()
        failure: Outcome = None
        try:
            done = await self._produce(kind, prep, prompts, opts, written)
            storing = time.perf_counter()
            job, balance = await self.store.settle_job(key_id, prep.job, done, at, renew)
            if job is None:
                await self.discard([done.output_path, *done.details.files.locations])
                return None, None, None
            prep.stages.add("store", ms_since(storing))
            self._count(kind, job, prep.job.model_version, started)
            return job, None, balance
        except InferenceUnavailable as exc:
            log.warning("job %s: %s", prep.job.id, exc)
            failure = Failure.UNAVAILABLE
        except StorageUnavailable as exc:
            log.warning("job %s: %s", prep.job.id, exc)
            failure = Failure.STORAGE
        except (ImageRejected, ValidationFailed) as exc:
            failure = exc
        except DatabaseUnavailable:
            raise
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("job %s failed", prep.job.id)
                failure = Failure.INTERNAL
            else:
                raise
        error = failure.message if isinstance(failure, ImageRejected) else str(failure)
        await asyncio.shield(self.store.record_failed(key_id, None, prep.job, error))  # for ``models report``
        self.metrics.images.labels(kind.value, JobStatus.FAILED.value).inc()
        return None, failure, None

    async def run(
        self, kind: JobKind, prep: Prepared, prompts: Prompts | None, opts: Options, answered_now: bool = True
    ) -> tuple[Job, Outcome]:
        """Run one reserved image to its end: completed and charged, or failed and refunded (and why).

        A database fault leaves it to the journal (``DatabaseUnavailable`` raised): refunded, or with
        ``answered_now`` (its client is answered now, so 503) revoked even if its completion committed.
        """
        written: list[str] = []
        try:
            return await self._run(kind, prep, prompts, opts, written)
        except DatabaseUnavailable:
            await self.settlements.owe_jobs([prep.job.id], revoke=answered_now, locations=written)
            raise

    async def _run(
        self, kind: JobKind, prep: Prepared, prompts: Prompts | None, opts: Options, written: list[str]
    ) -> tuple[Job, Outcome]:
        started = time.perf_counter()
        job_id = prep.job.id
        version = None if prep.route is None else prep.route.version
        failure: Outcome = None
        try:
            done = await self._produce(kind, prep, prompts, opts, written)
            storing = time.perf_counter()
            if not await self.store.complete_job(job_id, done):
                ended = await self.store.get_job(job_id)
                if ended is None or ended.status is not JobStatus.COMPLETED:
                    await self.discard(written)  # no result without its charge
                    raise RuntimeError(f"job {job_id} was no longer processing")
                # another frontend, which took over its lease, completed it first: the files under its id are
                # that completion's now (whichever run wrote them last), so they stay
                log.warning("job %s was completed by another frontend", job_id)
            prep.stages.add("store", ms_since(storing))
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
        except DatabaseUnavailable:
            raise
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("job %s failed", job_id)
            failure = Failure.INTERNAL
            await asyncio.shield(self.store.fail_job(job_id, failure))
            if isinstance(exc, asyncio.CancelledError):
                raise
        job = await self.store.get_job(job_id)
        assert job is not None
        self._count(kind, job, version, started)
        return job, failure

    def _count(self, kind: JobKind, job: Job, version: str | None, started: float) -> None:
        self.metrics.images.labels(kind.value, job.status.value).inc()
        if version is not None:
            self.metrics.version_requests.labels(version, job.status.value).inc()
            self.metrics.version_latency.labels(version).observe(time.perf_counter() - started)
        if job.status is JobStatus.COMPLETED:
            self.metrics.credits.inc(job.credits_used)
