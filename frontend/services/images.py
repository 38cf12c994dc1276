"""Single and batch requests: admitted, prepared, reserved, then run now or accepted for later (``async=true``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from maskserve.core.images import ImageRejected
from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import BatchRecord, Failure, Job, JobKind, JobStatus, NewJob, Stages
from maskserve.frontend.domain.requests import ExtractionOptions, Later, Prompts
from maskserve.frontend.errors import (
    ApiError,
    DatabaseUnavailable,
    InsufficientCredits,
    StorageUnavailable,
    Unavailable,
    ValidationFailed,
    rejection,
)
from maskserve.frontend.services.admission import Admission
from maskserve.frontend.services.base import Deps, Service, ms_since
from maskserve.frontend.services.deferred import AsyncRequests
from maskserve.frontend.services.preparation import Item, Preparation, Prepared, versions
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.services.running import Options, Runner


@dataclass(frozen=True)
class Served:
    """A single request's job, where its time went, and the key's balance after it (when known)."""

    job: Job
    stages: Stages
    balance: int | None = None


@dataclass(frozen=True)
class BatchOutcome:
    batch_id: str
    jobs: list[Job]
    wall_ms: float
    stages: Stages = field(default_factory=Stages)
    balance: int | None = None  # read inside the request's journalled part: a fault after a charge is settled


def _item_error(error: ApiError) -> str:
    if isinstance(error, ValidationFailed):
        return "; ".join(e.msg for e in error.errors)
    return error.detail


def _merged(prepared: list[Prepared]) -> Stages:
    stages = Stages()
    for prep in prepared:
        stages.merge(prep.stages)
    return stages


class ImageRequests(Service):
    def __init__(
        self,
        deps: Deps,
        routing: ModelRouting,
        preparation: Preparation,
        runner: Runner,
        later: AsyncRequests,
    ) -> None:
        super().__init__(deps)
        self.admission = Admission(deps.settings.max_admitted_images)
        self.routing = routing
        self.preparation = preparation
        self.runner = runner
        self.later = later

    async def single(
        self,
        key: ApiKey,
        kind: JobKind,
        item: Item,
        prompts: Prompts | None,
        opts: Options = None,
        later: Later | None = None,
    ) -> Served:
        """Run one image; with ``later``, accept it (checked and reserved) and run it in the background."""
        with self.admission.admit(1):
            if item.mask is None:  # Triton away: 503 before decoding
                await self.routing.known()
            prep = await self.preparation.prepared(key, kind, item, prompts)
            if key.credits < prep.job.cost:  # as authenticated: 402 before any work (the charge checks again)
                raise InsufficientCredits()
            with self.routing.running(versions([prep])):
                if later is not None:
                    try:
                        return await self._accept_one(key, kind, prep, prompts, opts, later)
                    except DatabaseUnavailable:  # answered 503: not accepted, so nothing stays reserved
                        await self.runner.settlements.owe_jobs([prep.job.id], revoke=True)
                        raise
                renew = None if prep.image_id is None else self.preparation.handles.renewal(prep.image_id)
                done, failure, balance = await self.runner.run_now(key.id, kind, prep, prompts, opts, renew)
        if done is None and failure is None:
            raise InsufficientCredits()
        if failure in (Failure.UNAVAILABLE, Failure.STORAGE):
            raise Unavailable(str(failure))
        if isinstance(failure, ImageRejected):
            raise rejection(failure)
        if isinstance(failure, ValidationFailed):
            raise failure
        if done is None or done.status is not JobStatus.COMPLETED:
            raise ApiError()
        return Served(done, prep.stages, balance)

    async def batch(
        self,
        key: ApiKey,
        kind: JobKind,
        items: list[Item],
        prompts: Prompts | None,
        opts: ExtractionOptions | None = None,
        later: Later | None = None,
    ) -> BatchOutcome:
        """Every image prepared together; those the balance pays for run as one batch, the others fail alone."""
        with self.admission.admit(len(items)):
            started = time.perf_counter()
            if any(item.mask is None for item in items):  # Triton away: 503 at once
                await self.routing.known()

            async def prepare(item: Item) -> Prepared | ApiError:
                try:
                    prep = await self.preparation.prepare(kind, item, prompts)
                    await self.preparation.keep(key, prep)
                    return prep
                except ApiError as exc:
                    return exc
                except StorageUnavailable:  # its upload cannot be kept for its handle: this image fails alone
                    return Unavailable(str(Failure.STORAGE))

            prepared = await asyncio.gather(*(prepare(item) for item in items))
            ready = [p for p in prepared if isinstance(p, Prepared)]
            for prep in ready:
                await self.preparation.handles.renew(prep.image_id)
            for prep in ready:
                prep.routed(None if prep.mask is not None else await self.routing.route(key, prep.digest))
            with self.routing.running(versions(ready)):
                return await self._run_batch(key, kind, items, prompts, opts, prepared, started, later)

    async def _balance(self, key: ApiKey) -> int | None:
        found = await self.store.get_key(key.id)
        return None if found is None else found.credits

    async def _accept_one(
        self, key: ApiKey, kind: JobKind, prep: Prepared, prompts: Prompts | None, opts: Options, later: Later
    ) -> Served:
        self.later.backlog.check(1)
        if not (await self.store.reserve_jobs(key.id, None, [prep.job]))[0]:
            raise InsufficientCredits()
        await self.preparation.handles.renew(prep.image_id)
        await self.later.accept(key, kind, prep.job.id, False, [prep], prompts, opts, later)
        accepted = await self.store.get_job(prep.job.id)
        assert accepted is not None
        return Served(accepted, prep.stages, await self._balance(key))

    async def _run_batch(
        self,
        key: ApiKey,
        kind: JobKind,
        items: list[Item],
        prompts: Prompts | None,
        opts: ExtractionOptions | None,
        prepared: list[Prepared | ApiError],
        started: float,
        later: Later | None,
    ) -> BatchOutcome:
        batch_id = uuid.uuid4().hex
        ready = [p for p in prepared if isinstance(p, Prepared)]
        if later is not None:
            self.later.backlog.check(len(ready))
        try:
            reserved = await self.store.reserve_jobs(key.id, batch_id, [p.job for p in ready])
            paid = {p.job.id for p, ok in zip(ready, reserved, strict=False) if ok}
            job_ids = []
            for item, prep in zip(items, prepared, strict=False):
                if isinstance(prep, ApiError):
                    failed = NewJob(uuid.uuid4().hex, kind, item.filename, item.size)
                    await self.store.record_failed(key.id, batch_id, failed, _item_error(prep))
                    job_ids.append(failed.id)
                else:
                    job_ids.append(prep.job.id)
            await self.store.record_batch(BatchRecord(batch_id, key.id, job_ids, time.time()))
            to_run = [p for p in ready if p.job.id in paid]
            if later is not None:
                await self.later.accept(key, kind, batch_id, True, to_run, prompts, opts, later)
                jobs = await self.store.get_jobs(job_ids)
                return BatchOutcome(batch_id, jobs, ms_since(started), _merged(ready), await self._balance(key))

            async def run(prep: Prepared) -> Job:
                job, _ = await self.runner.run(kind, prep, prompts, opts)
                return job

            runs = {p.job.id: asyncio.ensure_future(run(p)) for p in to_run}
            if runs:
                await asyncio.wait(runs.values())
            errors = [e for e in (t.exception() for t in runs.values()) if e is not None]  # every one read
            if errors:  # a bug first; else a database fault, which fails the whole batch (503)
                raise next((e for e in errors if not isinstance(e, DatabaseUnavailable)), errors[0])
            ran = {job_id: task.result() for job_id, task in runs.items()}
            others = {j.id: j for j in await self.store.get_jobs([i for i in job_ids if i not in ran])}
            jobs = [ran[i] if i in ran else others[i] for i in job_ids]
            return BatchOutcome(batch_id, jobs, ms_since(started), _merged(ready), await self._balance(key))
        except DatabaseUnavailable:  # answered 503: none of its images may stay charged
            await self.runner.settlements.owe_jobs([p.job.id for p in ready], revoke=True)
            raise
