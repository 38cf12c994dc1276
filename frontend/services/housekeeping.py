"""Housekeeping: what a start finds left over (jobs still ``processing``, async requests to resume), and
the sweep that expires output files and Idempotency-Keys."""

from __future__ import annotations

import asyncio
import logging
import time

from maskserve.frontend.domain.accounts import IDEMPOTENCY_TTL_S
from maskserve.frontend.domain.jobs import Deferred, Failure
from maskserve.frontend.services.base import Deps, Service
from maskserve.frontend.services.deferred import AsyncRequests
from maskserve.frontend.services.handles import ImageHandles
from maskserve.frontend.services.videos import VideoSessions

log = logging.getLogger("maskserve.frontend")

STALE_AFTER_S = 3600.0  # longer than any request can run (Triton deadlines, upload timeout, batches)


class Housekeeping(Service):
    def __init__(self, deps: Deps, later: AsyncRequests, handles: ImageHandles, videos: VideoSessions) -> None:
        super().__init__(deps)
        self.later = later
        self.handles = handles
        self.videos = videos

    async def recover(self) -> list[Deferred]:
        """At start: refund what a previous run left ``processing``; → its accepted async requests to resume.

        Alone, every leftover ``processing`` job is ours; sharing a database with
        other frontends, only jobs older than any request could run (the sweep
        repeats it). Accepted asynchronous requests keep their inputs: alone,
        their jobs run again instead.
        """
        shared = self.settings.shared
        deferred = await self.store.list_deferred()  # their jobs run again: here, or where their lease is claimed
        keep = frozenset(job_id for request in deferred for job_id in request.job_ids)
        keep |= frozenset(await self.store.active_propagations())  # resumed from their start (``VideoSessions``)
        stale = await self.store.fail_stale_processing(Failure.RESTARTED, STALE_AFTER_S if shared else 0.0, keep)
        if stale:
            log.warning("refunded %d jobs left processing by a previous run", stale)
        at = time.time()  # likewise the Idempotency-Keys of requests that were running then
        await self.store.sweep_idempotency(at - IDEMPOTENCY_TTL_S, at - (STALE_AFTER_S if shared else 0.0))
        return deferred

    async def resume(self, deferred: list[Deferred]) -> None:
        """Run again the accepted requests ``recover`` kept (once the model routing is known): alone, all of them
        now; sharing the database, those whose lease ran out (the others' frontends still run them)."""
        resumed = await self.later.claim(every=not self.settings.shared)
        if resumed:
            log.warning("resumed %d images of asynchronous requests accepted before a restart", resumed)

    async def sweep_once(self) -> None:
        if self.settings.shared:  # accepted async work is not stale: a lease hands it on
            waiting = frozenset(j for request in await self.store.list_deferred() for j in request.job_ids)
            waiting |= frozenset(await self.store.active_propagations())
            await self.store.fail_stale_processing(Failure.INTERRUPTED, STALE_AFTER_S, waiting)
        at = time.time()
        await self.store.sweep_idempotency(at - IDEMPOTENCY_TTL_S, at - STALE_AFTER_S)
        await self.later.sweep()
        await self.handles.sweep(at)
        await self.videos.sweep()
        for job in await self.store.expired_outputs(at):
            for location in [job.output_path, *job.extra_files]:
                if location:
                    await self.files.remove(location)
            await self.store.forget_output(job.id)

    async def sweep(self) -> None:
        """Every ``sweep_interval_s``: expired files and keys; stale jobs of frontends that stopped (shared)."""
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("expired-file sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_s)
