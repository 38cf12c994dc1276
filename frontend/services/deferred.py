"""Asynchronous requests (``async=true``): accepted now, run in the background, resumed after a restart.

Each accepted request is leased in the store to the frontend running it
(``LEASE_S``, renewed every ``RENEW_S``); every frontend claims requests whose
lease ran out (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and runs their images
still ``processing`` from the kept inputs, so a frontend that dies loses
nothing: another one finishes its work within ``LEASE_S + RENEW_S``. A job
completes once (its completion is conditional on ``processing``) and a
request's webhook is owed by whoever forgets its row, so nothing is charged
or sent twice.

Accepting keeps the inputs in the output storage and the request in the
store (``Deferred``, with its typed parameters); when every image has ended,
the webhook is owed in the same transaction that forgets the request, and
the kept inputs go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import Deferred, Failure, JobKind, JobStatus, KeptItem, KeptUpload
from maskserve.frontend.domain.requests import (
    EverythingOptions,
    ExtractionOptions,
    Later,
    Prompts,
    RequestParams,
)
from maskserve.frontend.errors import DatabaseUnavailable, NotFound, StorageUnavailable, Unavailable
from maskserve.frontend.services import shapes
from maskserve.frontend.services.admission import Admission
from maskserve.frontend.services.base import Deps, Service
from maskserve.frontend.services.preparation import Item, Preparation, Prepared, Upload, versions
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.services.running import Options, Runner

log = logging.getLogger("maskserve.frontend")

BACKLOG_FULL = "Too many asynchronous images are waiting; retry later"
LEASE_S = 15.0
RENEW_S = 5.0


def request_params(prompts: Prompts | None, opts: Options) -> RequestParams:
    return RequestParams(
        prompts=prompts,
        extraction=opts if isinstance(opts, ExtractionOptions) else None,
        everything=opts if isinstance(opts, EverythingOptions) else None,
    )


class AsyncRequests(Service):
    def __init__(self, deps: Deps, routing: ModelRouting, preparation: Preparation, runner: Runner, owner: str) -> None:
        super().__init__(deps)
        self.routing = routing
        self.preparation = preparation
        self.runner = runner
        self.owner = owner  # this frontend, as the leases name it
        self._running: set[asyncio.Task[None]] = set()
        self._leased: dict[str, asyncio.Task[None]] = {}  # request id → the task running it here
        self._turns = asyncio.Semaphore(deps.settings.inflight_images)  # async images running at once
        self.held = 0  # async images waiting or running as prepared (in memory)
        self.held_peak = 0
        # images accepted here and not yet ended; ``backlog.check`` refuses more at once, before credits move
        self.backlog = Admission(deps.settings.async_backlog_images, BACKLOG_FULL)

    @property
    def waiting(self) -> int:
        return self.backlog.admitted

    async def _keep(self, prep: Prepared, written: list[str]) -> KeptItem:
        """The request's inputs in the output storage; an image named by its handle stays the handle's."""
        kept: dict[str, KeptUpload] = {}
        for name, upload, suffix in (("image", prep.item.image, "input"), ("mask", prep.item.mask, "inmask")):
            if upload is not None:
                written.append(await self.files.put(f"{prep.job.id}_{suffix}", "bin", upload.data))
                kept[name] = KeptUpload(field=upload.field, filename=upload.filename, location=written[-1])
        return KeptItem(job_id=prep.job.id, image_id=prep.item.image_id, **kept)

    async def accept(
        self,
        key: ApiKey,
        kind: JobKind,
        request_id: str,
        batch: bool,
        preps: list[Prepared],
        prompts: Prompts | None,
        opts: Options,
        later: Later,
    ) -> None:
        """Keep the inputs and the request durably, then run its images in the background.

        Output storage away: the reserved images fail and are refunded, and the request gets 503.
        """
        written: list[str] = []
        try:
            items = [await self._keep(prep, written) for prep in preps]
        except StorageUnavailable:
            for prep in preps:
                await self.store.fail_job(prep.job.id, Failure.STORAGE)
            await self.discard(written)
            raise Unavailable(Failure.STORAGE) from None
        params = request_params(prompts, opts)
        request = Deferred(
            request_id, key.id, kind, batch, items, params, later.webhook_url, time.time(), later.base_url
        )
        await self.store.save_deferred(request, self.owner, time.time() + LEASE_S)
        self._in_background(request, preps, prompts, opts)

    def _in_background(
        self, request: Deferred, work: Sequence[Prepared | KeptItem], prompts: Prompts | None, opts: Options
    ) -> None:
        """Run the request's images: at most ``inflight_images`` of this process's waiting async images are held
        in memory as prepared; the others wait as their kept inputs and are prepared again when their turn comes."""
        held: list[Prepared | KeptItem] = []
        for unit in work:
            if isinstance(unit, Prepared) and self.held >= self.settings.inflight_images:
                unit = next(item for item in request.items if item.job_id == unit.job.id)
            if isinstance(unit, Prepared):
                self.held += 1
                self.held_peak = max(self.held_peak, self.held)
            held.append(unit)
        running = versions([u for u in held if isinstance(u, Prepared)])
        self.routing.in_flight.update(running)  # counted from now: a promotion's drain waits for these images
        self.backlog.admitted += len(held)

        async def one(unit: Prepared | KeptItem) -> None:
            async with self._turns:
                if isinstance(unit, Prepared):
                    try:
                        await self.runner.run(request.kind, unit, prompts, opts, answered_now=False)
                    finally:
                        self.held -= 1
                    return
                prep = await self._revive(request, unit, await self.store.get_key(request.key_id), prompts)
                if prep is not None:
                    with self.routing.running(versions([prep])):
                        await self.runner.run(request.kind, prep, prompts, opts, answered_now=False)

        async def finish() -> None:
            try:
                ran = await asyncio.gather(*(one(unit) for unit in held), return_exceptions=True)
                for outcome in ran:  # a database fault left its job to the journal; anything else is a bug
                    if isinstance(outcome, BaseException) and not isinstance(outcome, DatabaseUnavailable):
                        log.error("async request %s", request.id, exc_info=outcome)
                await self._close(request)
            except DatabaseUnavailable as exc:  # the sweep closes it once its jobs are settled
                log.warning("async request %s: closing it waits for the database: %s", request.id, exc)
            finally:
                self.routing.in_flight.subtract(running)
                self.backlog.admitted -= len(held)

        task = asyncio.ensure_future(finish())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        self._leased[request.id] = task
        task.add_done_callback(lambda _: self._leased.pop(request.id, None))

    async def claim(self, every: bool = False) -> int:
        """Take over the accepted requests whose lease ran out (``every``: all, at a start alone) and run them;
        → images resumed."""
        claimed = await self.store.claim_deferred(self.owner, time.time() + LEASE_S, every)
        return await self.resume([r for r in claimed if r.id not in self._leased])

    async def leases(self) -> None:
        """Every ``RENEW_S``: renew the leases of the requests running here, then claim those whose lease ran out."""
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                mine = list(self._leased)
                held = await self.store.renew_deferred(self.owner, mine, time.time() + LEASE_S)
                for request_id in set(mine) - held:
                    if request_id in self._leased:  # its completion stays conditional: nothing is done twice
                        log.warning("async request %s was taken over by another frontend", request_id)
                resumed = await self.claim()
                if resumed:
                    log.warning("took over %d images of asynchronous requests whose frontend stopped", resumed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: the next round tries again
                log.warning("async leases: %s", exc)

    async def _close(self, request: Deferred) -> None:
        """Every image of the request has ended: its webhook is owed, its kept inputs go."""
        webhook = None
        if request.webhook_url:
            body = json.dumps(await self._final_body(request), separators=(",", ":"))
            webhook = (request.key_id, request.webhook_url, body)
        await self.store.forget_deferred(request.id, webhook)
        await self.discard([location for item in request.items for location in item.locations])

    async def _final_body(self, request: Deferred) -> dict[str, object]:
        """What ``GET`` answers for the request now that it ended: the job's shape, or the batch's."""
        base = request.base_url or self.settings.public_url.rstrip("/")
        signer = self.deps.signer
        if not request.batch:
            job = await self.store.get_job(request.id)
            assert job is not None
            return shapes.single_body(base, signer, job)
        record = await self.store.get_batch(request.id)
        assert record is not None
        jobs = await self.store.get_jobs(record.job_ids)
        return shapes.recorded_batch_body(base, signer, record, jobs, time.time())

    async def sweep(self) -> None:
        """Forget the kept inputs of requests that ended elsewhere (failed by a sweep, or on another frontend)."""
        if any(not t.done() for t in self._running):
            return  # this frontend's own requests close themselves
        for request in await self.store.list_deferred():
            jobs = await self.store.get_jobs(request.job_ids)
            if all(j.status is not JobStatus.PROCESSING for j in jobs):
                await self._close(request)

    async def resume(self, requests: list[Deferred]) -> int:
        """After a restart or a takeover: run again every image of these accepted requests still ``processing``
        (each prepared from its kept inputs when its turn comes); → images resumed."""
        resumed = 0
        for request in requests:
            params = request.params
            prompts, opts = params.prompts, params.extraction or params.everything
            jobs = {j.id: j for j in await self.store.get_jobs(request.job_ids)}
            waiting: list[Prepared | KeptItem] = [
                item
                for item in request.items
                if (job := jobs.get(item.job_id)) is not None and job.status is JobStatus.PROCESSING
            ]
            if waiting:
                resumed += len(waiting)
                self._in_background(request, waiting, prompts, opts)
            else:
                await self._close(request)
        return resumed

    async def _revive(
        self, request: Deferred, item: KeptItem, key: ApiKey | None, prompts: Prompts | None
    ) -> Prepared | None:
        """One kept image, prepared again under its job id; a job that cannot run any more fails (refunded)."""

        async def load(kept: KeptUpload | None) -> Upload | None:
            if kept is None:
                return None
            data = await self.read_file(kept.location)
            if data is None:
                raise FileNotFoundError(kept.location)
            return Upload(kept.field, kept.filename, data)

        try:
            if key is None:
                raise NotFound("the API key is gone")
            image = await load(item.image)
            again = Item(image, await load(item.mask), item.image_id)
            prep = await self.preparation.prepared(key, request.kind, again, prompts)
            prep.job = replace(prep.job, id=item.job_id)
            return prep
        except Exception as exc:
            log.warning("async job %s cannot be prepared again from its kept inputs: %s", item.job_id, exc)
            await self.store.fail_job(item.job_id, Failure.RESTARTED)
            return None

    async def close(self) -> None:
        """Accepted work gets the shutdown's grace, then ends (its jobs are refunded at the next start)."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=self.settings.shutdown_timeout_s)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
