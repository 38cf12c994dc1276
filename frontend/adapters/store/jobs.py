"""The store's jobs: reservations, completion and failure (each with its ledger row, exactly once), batches,
output-file rows and service state (accepted asynchronous requests and webhook deliveries: ``deferred``)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from maskserve.frontend.adapters.store.accounts import add_ledger_row
from maskserve.frontend.adapters.store.engine import COMPLETED, FAILED, PROCESSING, Database
from maskserve.frontend.adapters.tables import (
    api_keys,
    batches,
    images,
    jobs,
    output_files,
    service_state,
)
from maskserve.frontend.domain.accounts import LedgerReason, now
from maskserve.frontend.domain.jobs import (
    INSUFFICIENT_CREDITS,
    BatchRecord,
    Completion,
    Job,
    JobDetails,
    JobKind,
    JobStatus,
    NewJob,
)

Renewal = tuple[str, float]
"""An image handle and the expiry a use renews it to."""


def _job(row: sa.Row[Any]) -> Job:
    values = dict(row._mapping)
    for name in ("reserved", "credits_used", "input_bytes", "output_bytes"):
        if values[name] is not None:
            values[name] = int(values[name])
    values["kind"], values["status"] = JobKind(values["kind"]), JobStatus(values["status"])
    values["details"] = JobDetails.model_validate_json(values["details"]) if values["details"] else JobDetails()
    return Job(**values)


def _insert_job(
    conn: sa.Connection,
    key_id: str,
    batch_id: str | None,
    job: NewJob,
    created: float,
    status: JobStatus,
    reserved: int,
    error: str | None,
) -> None:
    conn.execute(
        jobs.insert().values(
            id=job.id,
            key_id=key_id,
            batch_id=batch_id,
            kind=job.kind.value,
            status=status.value,
            input_filename=job.input_filename,
            created_at=created,
            started_at=created if status is JobStatus.PROCESSING else None,
            finished_at=created if status is JobStatus.FAILED else None,
            reserved=reserved,
            error=error,
            original_width=job.original_width,
            original_height=job.original_height,
            input_bytes=job.input_bytes,
            model_version=job.model_version,
            input_digest=job.input_digest,
        )
    )


def _reserve(conn: sa.Connection, key_id: str, batch_id: str | None, new_jobs: list[NewJob]) -> list[bool]:
    results = []
    created = now()
    for job in new_jobs:
        taken = conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.credits >= job.cost)
            .values(credits=api_keys.c.credits - job.cost)
        )
        ok = taken.rowcount == 1
        status = JobStatus.PROCESSING if ok else JobStatus.FAILED
        _insert_job(
            conn, key_id, batch_id, job, created, status, job.cost if ok else 0, None if ok else INSUFFICIENT_CREDITS
        )
        if ok:
            add_ledger_row(conn, key_id, -job.cost, LedgerReason.RESERVE, job.id, created)
        results.append(ok)
    return results


def _completed(done: Completion) -> dict[str, Any]:
    """The columns a finished job's completion sets."""
    return {
        "processing_ms": done.processing_ms,
        "output_path": done.output_path,
        "content_type": done.content_type,
        "output_width": done.output_width,
        "output_height": done.output_height,
        "output_bytes": done.output_bytes,
        "expires_at": done.expires_at,
        "model_version": done.model_version,
        "details": done.details.to_json(),
    }


def _complete(conn: sa.Connection, job_id: str, done: Completion) -> bool:
    result = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == PROCESSING)
        .values(status=COMPLETED, credits_used=jobs.c.reserved, finished_at=now(), **_completed(done))
    )
    return result.rowcount == 1


def _fail(conn: sa.Connection, job_id: str, error: str) -> bool:
    stamp = now()
    row = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == PROCESSING)
        .values(status=FAILED, error=error, credits_used=0, finished_at=stamp)
        .returning(jobs.c.key_id, jobs.c.reserved)
    ).first()
    if row is None:
        return False
    if row.reserved:
        conn.execute(
            api_keys.update().where(api_keys.c.id == row.key_id).values(credits=api_keys.c.credits + row.reserved)
        )
        add_ledger_row(conn, row.key_id, int(row.reserved), LedgerReason.RELEASE, job_id, stamp)
    return True


def _void(conn: sa.Connection, job_id: str, error: str, revoke: bool) -> tuple[JobStatus | None, list[str]]:
    """Settle a job a database fault interrupted: refunded if still processing; with ``revoke``, a completed one
    too (failed, its charge returned); → its status after, and the files of a revoked job to remove."""
    row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        return None, []
    job = _job(row)
    if job.status is JobStatus.PROCESSING:
        _fail(conn, job_id, error)
        return JobStatus.FAILED, []
    if job.status is not JobStatus.COMPLETED or not revoke:
        return job.status, []
    stamp = now()
    conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == COMPLETED)
        .values(status=FAILED, error=error, credits_used=0, output_path=None, finished_at=stamp)
    )
    if job.credits_used:
        conn.execute(
            api_keys.update().where(api_keys.c.id == job.key_id).values(credits=api_keys.c.credits + job.credits_used)
        )
        add_ledger_row(conn, job.key_id, job.credits_used, LedgerReason.RELEASE, job_id, stamp)
    return JobStatus.FAILED, [location for location in (job.output_path, *job.extra_files) if location]


def _fail_all(conn: sa.Connection, job_ids: list[str], error: str) -> int:
    return sum(_fail(conn, job_id, error) for job_id in job_ids)


def _settle(
    conn: sa.Connection, key_id: str, job: NewJob, done: Completion, started: float, renew: Renewal | None
) -> tuple[Job | None, int | None]:
    """Charge and record a finished job in one transaction (and renew its image's handle), if the balance pays."""
    balance = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.credits >= job.cost)
        .values(credits=api_keys.c.credits - job.cost)
        .returning(api_keys.c.credits)
    ).scalar()
    if balance is None:
        return None, None
    at = now()
    conn.execute(
        jobs.insert().values(
            id=job.id,
            key_id=key_id,
            kind=job.kind.value,
            status=COMPLETED,
            input_filename=job.input_filename,
            created_at=started,
            started_at=started,
            finished_at=at,
            reserved=job.cost,
            credits_used=job.cost,
            original_width=job.original_width,
            original_height=job.original_height,
            input_bytes=job.input_bytes,
            input_digest=job.input_digest,
            **_completed(done),
        )
    )
    add_ledger_row(conn, key_id, -job.cost, LedgerReason.RESERVE, job.id, at)
    if renew is not None:
        image_id, expires_at = renew
        conn.execute(
            images.update().where(images.c.id == image_id, images.c.expires_at > at).values(expires_at=expires_at)
        )
    return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job.id)).one()), int(balance)


class JobRows(Database):
    async def reserve_jobs(self, key_id: str, batch_id: str | None, new_jobs: list[NewJob]) -> list[bool]:
        """In order: reserve each job's cost if the balance covers it, else record it failed."""
        return await self._tx(_reserve, key_id, batch_id, new_jobs)

    async def record_failed(self, key_id: str, batch_id: str | None, job: NewJob, error: str) -> None:
        await self._tx(_insert_job, key_id, batch_id, job, now(), JobStatus.FAILED, 0, error)

    async def complete_job(self, job_id: str, done: Completion) -> bool:
        return await self._tx(_complete, job_id, done)

    async def settle_job(
        self, key_id: str, job: NewJob, done: Completion, started: float, renew: Renewal | None = None
    ) -> tuple[Job | None, int | None]:
        """A job that ran without a reservation, charged and stored together: (the job, the balance after),
        or (None, None) when the balance no longer pays (nothing is written)."""
        return await self._tx(_settle, key_id, job, done, started, renew)

    async def fail_job(self, job_id: str, error: str) -> bool:
        return await self._tx(_fail, job_id, error)

    async def void_job(self, job_id: str, error: str, revoke: bool) -> tuple[JobStatus | None, list[str]]:
        return await self._tx(_void, job_id, error, revoke)

    async def fail_stale_processing(
        self, error: str, older_than_s: float = 0.0, keep: frozenset[str] = frozenset()
    ) -> int:
        """Refund jobs left ``processing``; with other frontends running, only those older than any request can be.

        ``keep``: jobs that will run again (accepted asynchronous requests whose inputs are kept).
        """
        rows = await self._read(
            sa.select(jobs.c.id).where(jobs.c.status == PROCESSING, jobs.c.started_at <= now() - older_than_s)
        )
        return await self._tx(_fail_all, [row.id for row in rows if row.id not in keep], error)

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._one(sa.select(jobs).where(jobs.c.id == job_id))
        return None if row is None else _job(row)

    async def expired_outputs(self, before: float) -> list[Job]:
        rows = await self._read(sa.select(jobs).where(jobs.c.output_path.is_not(None), jobs.c.expires_at < before))
        return [_job(r) for r in rows]

    async def forget_output(self, job_id: str) -> None:
        await self._execute(jobs.update().where(jobs.c.id == job_id).values(output_path=None))

    async def get_state(self, name: str) -> str | None:
        row = await self._one(sa.select(service_state.c.value).where(service_state.c.name == name))
        return None if row is None else str(row.value)

    async def set_state(self, name: str, value: str) -> None:
        insert = self._insert(service_state).values(name=name, value=value, updated_at=now())
        await self._execute(
            insert.on_conflict_do_update(
                index_elements=[service_state.c.name],
                set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
            )
        )

    async def set_state_if_absent(self, name: str, value: str) -> None:
        insert = self._insert(service_state).values(name=name, value=value, updated_at=now())
        await self._execute(insert.on_conflict_do_nothing(index_elements=[service_state.c.name]))

    async def put_file(self, job_id: str, data: bytes) -> None:
        insert = self._insert(output_files).values(job_id=job_id, data=data, created_at=now())
        await self._execute(
            insert.on_conflict_do_update(index_elements=[output_files.c.job_id], set_={"data": insert.excluded.data})
        )

    async def get_file(self, job_id: str) -> bytes | None:
        row = await self._one(sa.select(output_files.c.data).where(output_files.c.job_id == job_id))
        return None if row is None else bytes(row.data)

    async def delete_file(self, job_id: str) -> None:
        await self._execute(output_files.delete().where(output_files.c.job_id == job_id))

    # --- batches and asynchronous requests --------------------------------------

    async def record_batch(self, record: BatchRecord) -> None:
        await self._execute(
            batches.insert().values(
                id=record.id, key_id=record.key_id, job_ids=json.dumps(record.job_ids), created_at=record.created_at
            )
        )

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self._one(sa.select(batches).where(batches.c.id == batch_id))
        if row is None:
            return None
        return BatchRecord(row.id, row.key_id, json.loads(row.job_ids), float(row.created_at))

    async def get_jobs(self, job_ids: list[str]) -> list[Job]:
        """The jobs, in the order given (missing ones left out)."""
        rows = {r.id: _job(r) for r in await self._read(sa.select(jobs).where(jobs.c.id.in_(job_ids)))}
        return [rows[i] for i in job_ids if i in rows]
