"""Money across a database fault: what a request could not record is journalled, then settled once the
database is back.

A request that meets ``DatabaseUnavailable`` after it reserved or charged
anything answers 503 and writes what it owes to the local journal (``Owed``):
its jobs, to be refunded, and, when its client was answered 503 (every
synchronous request), revoked even if their completion had committed, since
a charge stands only with a result the client got; the files it wrote; and an
``Idempotency-Key`` to release, so the client's retry runs. ``run`` tries the
journal every ``SETTLE_POLL_S``; each entry is one conditional transaction, so
settling twice (two frontends on one data directory, a crash between the
store and the journal) changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging

from maskserve.frontend.domain.jobs import Failure, JobStatus, Owed
from maskserve.frontend.errors import DatabaseUnavailable
from maskserve.frontend.ports import Journal
from maskserve.frontend.services.base import Deps, Service

log = logging.getLogger("maskserve.frontend")

SETTLE_POLL_S = 1.0


class Settlements(Service):
    def __init__(self, deps: Deps, journal: Journal) -> None:
        super().__init__(deps)
        self.journal = journal
        self._wake = asyncio.Event()

    async def owe_jobs(self, job_ids: list[str], revoke: bool, locations: list[str] | None = None) -> None:
        """These jobs met a database fault: refund them (``revoke``: even if completed) once it is back."""
        files = tuple(locations or ())  # the files the (single) run wrote, kept with its entry
        entries = [
            Owed(job_id=j, error=Failure.DATABASE.value, revoke=revoke, locations=files if i == 0 else ())
            for i, j in enumerate(job_ids)
        ]
        await asyncio.shield(self.journal.owe(entries))
        self._wake.set()

    async def owe_release(self, key_id: str, idem_key: str) -> None:
        """An ``Idempotency-Key`` whose release met a database fault."""
        await asyncio.shield(self.journal.owe([Owed(idempotency=(key_id, idem_key))]))
        self._wake.set()

    async def _settle(self, entry: Owed) -> str:
        if entry.idempotency is not None:
            await self.store.release_idempotency(*entry.idempotency)
            return "released"
        assert entry.job_id is not None
        status, recorded = await self.store.void_job(entry.job_id, entry.error or Failure.DATABASE.value, entry.revoke)
        if status is JobStatus.COMPLETED:
            return "kept"  # its result was committed, and its client can fetch it (asynchronous)
        await self.discard([*entry.locations, *recorded])
        return "revoked" if recorded else "refunded"

    async def settle_once(self) -> int:
        """Settle what the journal holds, until the database refuses; → entries settled."""
        done = 0
        while entries := await self.journal.pending():
            settled = []
            try:
                for entry in entries:
                    outcome = await self._settle(entry)
                    self.metrics.settlements.labels(outcome).inc()
                    settled.append(entry.id)
            except DatabaseUnavailable:
                await self.journal.settled(settled)
                return done + len(settled)
            await self.journal.settled(settled)
            done += len(settled)
        if done:
            log.warning("settled %d journal entries left by a database fault", done)
        return done

    async def run(self) -> None:
        while True:
            try:
                await self.settle_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("settling the journal failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), SETTLE_POLL_S)
            except TimeoutError:
                pass
            await asyncio.sleep(0.2)  # a fault wakes it at once: give the database a moment
