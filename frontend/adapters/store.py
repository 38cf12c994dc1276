"""The store: one implementation of the money rules for SQLite and PostgreSQL.

Every operation is written once, as a function of a SQLAlchemy Core
``Connection`` over the schema in ``tables.py``; Alembic migrates that schema
when the store opens. Concurrency rests on the database itself, the same way
on both: a reservation is one conditional ``UPDATE … WHERE credits >= cost``,
completion and failure are conditional on the job still being ``processing``,
and each runs in one transaction with its ledger row.

How an operation runs differs, by measurement. PostgreSQL: on asyncpg,
through ``AsyncConnection.run_sync``. SQLite: with the standard library's
driver in a worker thread, the whole operation in one hop; aiosqlite hops to
its thread for every cursor, statement, fetch and close, which cost 4 ms more
per request (benchmarks/README.md). Writes go through one connection and start
with ``BEGIN IMMEDIATE`` (the write lock up front, with a busy timeout), so
two processes on one file (a frontend and an admin command) serialise instead
of failing on a lock upgrade; reads use their own connections in autocommit
and never wait for a writer (WAL). On PostgreSQL one advisory lock serialises
the migrators of frontends starting together, and one per key and bucket the
shared rate window.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from maskserve.frontend.adapters.tables import (
    api_keys,
    batches,
    deferred,
    deliveries,
    frontends,
    idempotency,
    jobs,
    ledger,
    output_files,
    rate_hits,
    service_state,
    shadow_results,
)
from maskserve.frontend.domain import (
    ACTIVE_MODEL_VERSION,
    INSUFFICIENT_CREDITS,
    MODEL_ROUTING,
    ApiKey,
    BatchRecord,
    Claim,
    Completion,
    Deferred,
    Delivery,
    FrontendReport,
    Job,
    JobKind,
    JobStatus,
    LedgerReason,
    NewJob,
    RateWindow,
    Routing,
    ShadowResult,
    StoredResponse,
    hash_key,
    key_matches,
    key_prefix,
    new_key_secret,
    now,
)

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 7301
PROCESSING, COMPLETED, FAILED = JobStatus.PROCESSING.value, JobStatus.COMPLETED.value, JobStatus.FAILED.value


def database_url(url: str, sqlite_path: Path) -> str:
    """The SQLAlchemy URL: SQLite in the data directory, or the PostgreSQL the settings name."""
    if not url:
        return f"sqlite:///{sqlite_path}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+asyncpg://"):
        return url
    raise ValueError("MASKSERVE_DATABASE_URL must be a postgresql:// URL")


def _sqlite_engine(url: str, pool_size: int, writer: bool) -> sa.Engine:
    """The writer begins every transaction IMMEDIATE; the readers run each query on its own (autocommit)."""
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0, "connect_args": {"timeout": 10}}
    options["connect_args"]["check_same_thread"] = False
    if not writer:
        options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    engine = sa.create_engine(url, poolclass=sa.pool.QueuePool, **options)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "busy_timeout=10000", "foreign_keys=ON", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# --- the operations, once for both databases -----------------------------------


def _key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(row.id, row.name, row.prefix, int(row.credits), row.created_at, row.revoked_at, row.pinned_version)


def _job(row: sa.Row[Any]) -> Job:
    values = dict(row._mapping)
    for name in ("reserved", "credits_used", "input_bytes", "output_bytes"):
        if values[name] is not None:
            values[name] = int(values[name])
    values["kind"], values["status"] = JobKind(values["kind"]), JobStatus(values["status"])
    values["details"] = json.loads(values["details"]) if values["details"] else None
    return Job(**values)


def _ledger(conn: sa.Connection, key_id: str, delta: int, reason: str, job_id: str | None, at: float) -> None:
    conn.execute(ledger.insert().values(key_id=key_id, delta=delta, reason=str(reason), job_id=job_id, created_at=at))


def _create_key(conn: sa.Connection, key: ApiKey, key_hash: str) -> None:
    conn.execute(
        api_keys.insert().values(
            id=key.id,
            name=key.name,
            prefix=key.prefix,
            key_hash=key_hash,
            credits=key.credits,
            created_at=key.created_at,
        )
    )
    if key.credits:
        _ledger(conn, key.id, key.credits, LedgerReason.INITIAL, None, key.created_at)


def _add_credits(conn: sa.Connection, key_id: str, amount: int, reason: str) -> int | None:
    balance = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.credits + amount >= 0)
        .values(credits=api_keys.c.credits + amount)
        .returning(api_keys.c.credits)
    ).scalar()
    if balance is None:
        return None
    _ledger(conn, key_id, amount, reason, None, now())
    return int(balance)


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
            _ledger(conn, key_id, -job.cost, LedgerReason.RESERVE, job.id, created)
        results.append(ok)
    return results


def _complete(conn: sa.Connection, job_id: str, done: Completion) -> bool:
    result = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status == PROCESSING)
        .values(
            status=COMPLETED,
            credits_used=jobs.c.reserved,
            finished_at=now(),
            processing_ms=done.processing_ms,
            output_path=done.output_path,
            content_type=done.content_type,
            output_width=done.output_width,
            output_height=done.output_height,
            output_bytes=done.output_bytes,
            expires_at=done.expires_at,
            model_version=done.model_version,
            details=None if done.details is None else json.dumps(done.details, separators=(",", ":")),
        )
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
        _ledger(conn, row.key_id, int(row.reserved), LedgerReason.RELEASE, job_id, stamp)
    return True


def _fail_all(conn: sa.Connection, job_ids: list[str], error: str) -> int:
    return sum(_fail(conn, job_id, error) for job_id in job_ids)


def _rate_hit(
    conn: sa.Connection, key_id: str, bucket: str, limit: int, window_s: float, at: float, postgres: bool
) -> RateWindow:
    mine = (rate_hits.c.key_id == key_id) & (rate_hits.c.bucket == bucket)
    if postgres:  # SQLite's BEGIN IMMEDIATE already serialises writers
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"{key_id}:{bucket}"))))
    conn.execute(rate_hits.delete().where(mine, rate_hits.c.at <= at - window_s))
    count = int(conn.execute(sa.select(sa.func.count()).select_from(rate_hits).where(mine)).scalar_one())
    allowed = count < limit
    if allowed:
        conn.execute(rate_hits.insert().values(key_id=key_id, bucket=bucket, at=at))
        count += 1
    oldest = conn.execute(sa.select(sa.func.min(rate_hits.c.at)).where(mine)).scalar()
    return RateWindow(allowed, count, oldest)


ROUTING_ROWS = sa.select(service_state.c.name, service_state.c.value).where(
    service_state.c.name.in_((MODEL_ROUTING, ACTIVE_MODEL_VERSION))
)
"""The routing's row, and the promoted-version row of databases older than it."""


def _routing_of(rows: list[sa.Row[Any]]) -> Routing:
    found = {row.name: row.value for row in rows}
    return Routing.from_json(found.get(MODEL_ROUTING), found.get(ACTIVE_MODEL_VERSION))


def _routing(conn: sa.Connection) -> Routing:
    return _routing_of(_rows(conn, ROUTING_ROWS))


def _update_routing(conn: sa.Connection, change: Callable[[Routing], Routing], postgres: bool) -> Routing:
    """Read, change and write the routing in one transaction (admin commands may race)."""
    if postgres:  # SQLite's BEGIN IMMEDIATE already serialises writers; the row may not exist yet
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(MODEL_ROUTING))))
    new = change(_routing(conn))
    stamp = now()
    updated = conn.execute(
        service_state.update()
        .where(service_state.c.name == MODEL_ROUTING)
        .values(value=new.to_json(), updated_at=stamp)
    )
    if updated.rowcount == 0:
        conn.execute(service_state.insert().values(name=MODEL_ROUTING, value=new.to_json(), updated_at=stamp))
    return new


def _report_frontend(conn: sa.Connection, report: FrontendReport) -> None:
    values = {"generation": report.generation, "in_flight": json.dumps(report.in_flight), "seen_at": report.seen_at}
    if conn.execute(frontends.update().where(frontends.c.id == report.id).values(**values)).rowcount == 0:
        conn.execute(frontends.insert().values(id=report.id, **values))


def _claim(
    conn: sa.Connection, insert: Any, key_id: str, idem_key: str, fingerprint: str, expired_before: float
) -> tuple[Claim, StoredResponse | None]:
    """Insert the key as running, unless it is there (and not expired): then what it holds decides."""
    mine = (idempotency.c.key_id == key_id) & (idempotency.c.idem_key == idem_key)
    conn.execute(idempotency.delete().where(mine, idempotency.c.created_at < expired_before))
    if conn.execute(insert.on_conflict_do_nothing()).rowcount:
        return Claim.STARTED, None
    row = conn.execute(sa.select(idempotency).where(mine)).one()
    if row.fingerprint != fingerprint:
        return Claim.MISMATCH, None
    if row.state == "running":
        return Claim.RUNNING, None
    return Claim.REPLAY, StoredResponse(int(row.status), str(row.body), json.loads(row.headers or "{}"))


def _rows(conn: sa.Connection, query: sa.Executable) -> list[sa.Row[Any]]:
    return list(conn.execute(query).all())


def _upgrade(conn: sa.Connection, postgres: bool) -> None:
    if postgres:  # several frontends may start together: one migrator at a time
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


class SqlStore:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self.postgres = not url.startswith("sqlite")
        self._async: AsyncEngine | None = None
        self._writer: sa.Engine | None = None
        self._reader: sa.Engine | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        self._read_threads: ThreadPoolExecutor | None = None

    # --- running an operation -------------------------------------------------

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in one transaction."""
        if self._async is not None:
            async with self._async.begin() as conn:
                return await conn.run_sync(fn, *args)
        if self._writer is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._write_thread, self._sync_tx, fn, args)

    def _sync_tx(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self._writer is not None
        with self._writer.begin() as conn:
            return fn(conn, *args)

    async def _read(self, query: sa.Executable) -> list[sa.Row[Any]]:
        if self._async is not None:
            async with self._async.connect() as conn:
                return list((await conn.execute(query)).all())
        if self._reader is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._sync_read, query)

    def _sync_read(self, query: sa.Executable) -> list[sa.Row[Any]]:
        assert self._reader is not None
        with self._reader.connect() as conn:
            return _rows(conn, query)

    async def _one(self, query: sa.Executable) -> sa.Row[Any] | None:
        rows = await self._read(query)
        return rows[0] if rows else None

    # --- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self.postgres:
            self._async = create_async_engine(self.url, pool_size=self.pool_size, max_overflow=0)
        else:
            Path(self.url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(self.url, 1, writer=True)
            self._reader = _sqlite_engine(self.url, 2, writer=False)
            self._write_thread = ThreadPoolExecutor(1, "maskserve-db-write")
            self._read_threads = ThreadPoolExecutor(2, "maskserve-db-read")
        await self._tx(_upgrade, self.postgres)

    async def close(self) -> None:
        if self._async is not None:
            await self._async.dispose()
        for engine in (self._writer, self._reader):
            if engine is not None:
                engine.dispose()
        for pool in (self._write_thread, self._read_threads):
            if pool is not None:
                pool.shutdown(wait=True)
        self._async = self._writer = self._reader = self._write_thread = self._read_threads = None

    async def ping(self) -> None:
        await self._read(sa.select(sa.literal(1)))

    # --- keys and credits -----------------------------------------------------

    async def create_key(self, name: str, credits: int) -> tuple[ApiKey, str]:
        if credits < 0:
            raise ValueError("credits must be >= 0")
        secret = new_key_secret()
        key = ApiKey(uuid.uuid4().hex, name, key_prefix(secret), credits, now())
        await self._tx(_create_key, key, hash_key(secret))
        return key, secret

    async def list_keys(self) -> list[ApiKey]:
        return [_key(r) for r in await self._read(sa.select(api_keys).order_by(api_keys.c.created_at))]

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._one(sa.select(api_keys).where(api_keys.c.id == key_id))
        return None if row is None else _key(row)

    async def revoke_key(self, key_id: str) -> bool:
        query = (
            api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now())
        )
        return bool(await self._tx(lambda conn: conn.execute(query).rowcount == 1))

    async def add_credits(self, key_id: str, amount: int, reason: str = LedgerReason.TOP_UP) -> int:
        balance = await self._tx(_add_credits, key_id, amount, reason)
        if balance is None:
            raise KeyError(key_id)
        return balance

    async def authenticate(self, secret: str) -> ApiKey | None:
        rows = await self._read(
            sa.select(api_keys).where(api_keys.c.prefix == key_prefix(secret), api_keys.c.revoked_at.is_(None))
        )
        found = None
        for row in rows:  # compare every candidate, in constant time
            if key_matches(secret, row.key_hash):
                found = _key(row)
        return found

    async def ledger_sum(self, key_id: str) -> int:
        row = await self._one(
            sa.select(sa.func.coalesce(sa.func.sum(ledger.c.delta), 0)).where(ledger.c.key_id == key_id)
        )
        return int(row[0]) if row else 0

    # --- jobs -----------------------------------------------------------------

    async def reserve_jobs(self, key_id: str, batch_id: str | None, new_jobs: list[NewJob]) -> list[bool]:
        """In order: reserve each job's cost if the balance covers it, else record it failed."""
        return await self._tx(_reserve, key_id, batch_id, new_jobs)

    async def record_failed(self, key_id: str, batch_id: str | None, job: NewJob, error: str) -> None:
        await self._tx(_insert_job, key_id, batch_id, job, now(), JobStatus.FAILED, 0, error)

    async def complete_job(self, job_id: str, done: Completion) -> bool:
        return await self._tx(_complete, job_id, done)

    async def fail_job(self, job_id: str, error: str) -> bool:
        return await self._tx(_fail, job_id, error)

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

    # --- service state and file rows: upserts in the database's own dialect --

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_…`` on both databases."""
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    async def _execute(self, query: sa.Executable) -> None:
        await self._tx(lambda conn: conn.execute(query))

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

    async def save_deferred(self, request: Deferred) -> None:
        await self._execute(
            deferred.insert().values(
                id=request.id,
                key_id=request.key_id,
                kind=request.kind.value,
                batch=request.batch,
                items=json.dumps(request.items),
                params=request.params,
                webhook_url=request.webhook_url,
                created_at=request.created_at,
                base_url=request.base_url,
            )
        )

    async def list_deferred(self) -> list[Deferred]:
        rows = await self._read(sa.select(deferred).order_by(deferred.c.created_at))
        return [
            Deferred(
                r.id,
                r.key_id,
                JobKind(r.kind),
                bool(r.batch),
                json.loads(r.items),
                r.params,
                r.webhook_url,
                float(r.created_at),
                r.base_url,
            )
            for r in rows
        ]

    async def forget_deferred(self, request_id: str, webhook: tuple[str, str, str] | None = None) -> bool:
        """Forget an ended request and, in the same transaction, owe its webhook (key id, URL, body).

        Only the caller that removed the row owes the webhook: two frontends closing one request send one.
        """

        def forget(conn: sa.Connection) -> bool:
            if not conn.execute(deferred.delete().where(deferred.c.id == request_id)).rowcount:
                return False
            if webhook is not None:
                at = now()
                key_id, url, body = webhook
                conn.execute(
                    deliveries.insert().values(
                        key_id=key_id, url=url, body=body, attempts=0, state="pending", next_at=at, created_at=at
                    )
                )
            return True

        return await self._tx(forget)

    # --- webhooks ------------------------------------------------------------------

    async def rotate_webhook_secret(self, key_id: str) -> str | None:
        """A new signing secret for the key's webhooks (the old one stops signing at once); None: no such key."""
        secret = "whsec_" + secrets.token_urlsafe(32)

        def rotate(conn: sa.Connection) -> bool:
            done = conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(webhook_secret=secret))
            return bool(done.rowcount)

        return secret if await self._tx(rotate) else None

    async def webhook_secret(self, key_id: str) -> str | None:
        row = await self._one(sa.select(api_keys.c.webhook_secret).where(api_keys.c.id == key_id))
        return None if row is None else row.webhook_secret

    async def claim_deliveries(self, lease_s: float, limit: int = 16) -> list[Delivery]:
        """Due deliveries, each claimed for ``lease_s`` by a conditional update (one frontend sends each)."""
        at = now()
        rows = await self._read(
            sa.select(deliveries)
            .where(deliveries.c.state == "pending", deliveries.c.next_at <= at)
            .order_by(deliveries.c.next_at)
            .limit(limit)
        )

        def claim(conn: sa.Connection) -> list[Delivery]:
            mine = []
            for r in rows:
                taken = conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == r.id, deliveries.c.next_at == r.next_at, deliveries.c.state == "pending")
                    .values(next_at=at + lease_s)
                )
                if taken.rowcount:
                    mine.append(Delivery(int(r.id), r.key_id, r.url, r.body, int(r.attempts)))
            return mine

        return await self._tx(claim) if rows else []

    async def delivery_done(self, delivery_id: int, attempts: int, error: str | None, retry_at: float | None) -> None:
        """After an attempt: delivered (no error), pending again at ``retry_at``, or failed for good."""
        state = "delivered" if error is None else ("pending" if retry_at is not None else "failed")
        await self._execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(attempts=attempts, state=state, last_error=error, next_at=retry_at if retry_at else now())
        )

    # --- safe retries (Idempotency-Key) ---------------------------------------

    async def claim_idempotency(
        self, key_id: str, idem_key: str, fingerprint: str, ttl_s: float
    ) -> tuple[Claim, StoredResponse | None]:
        at = now()
        insert = self._insert(idempotency).values(
            key_id=key_id, idem_key=idem_key, fingerprint=fingerprint, state="running", created_at=at
        )
        return await self._tx(_claim, insert, key_id, idem_key, fingerprint, at - ttl_s)

    async def store_idempotent(self, key_id: str, idem_key: str, response: StoredResponse) -> None:
        await self._execute(
            idempotency.update()
            .where(idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key)
            .values(state="done", status=response.status, body=response.body, headers=json.dumps(response.headers))
        )

    async def release_idempotency(self, key_id: str, idem_key: str) -> None:
        """The request ended without a stored response (refused, failed, cut off): a retry may run it."""
        await self._execute(
            idempotency.delete().where(
                idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key, idempotency.c.state == "running"
            )
        )

    async def sweep_idempotency(self, expired_before: float, running_before: float) -> int:
        """Forget expired keys, and running ones no request can still be running (its frontend stopped)."""

        def sweep(conn: sa.Connection) -> int:
            c = idempotency.c
            gone = (c.created_at < expired_before) | ((c.state == "running") & (c.created_at <= running_before))
            return int(conn.execute(idempotency.delete().where(gone)).rowcount)

        return await self._tx(sweep)

    # --- the shared rate window -----------------------------------------------

    async def rate_hit(self, key_id: str, bucket: str, limit: int, window_s: float, at: float) -> RateWindow:
        """Sliding window shared by every frontend on this database."""
        return await self._tx(_rate_hit, key_id, bucket, limit, window_s, at, self.postgres)

    # --- model lifecycle: pins, routing, frontends' reports, shadow results -----

    async def pin_key(self, key_id: str, version: str | None) -> bool:
        query = api_keys.update().where(api_keys.c.id == key_id).values(pinned_version=version)
        return bool(await self._tx(lambda conn: conn.execute(query).rowcount == 1))

    async def get_routing(self) -> Routing:
        """Read without a transaction: every frontend asks twice a second."""
        return _routing_of(await self._read(ROUTING_ROWS))

    async def update_routing(self, change: Callable[[Routing], Routing]) -> Routing:
        return await self._tx(_update_routing, change, self.postgres)

    async def report_frontend(self, report: FrontendReport) -> None:
        await self._tx(_report_frontend, report)

    async def forget_frontend(self, frontend_id: str) -> None:
        await self._execute(frontends.delete().where(frontends.c.id == frontend_id))

    async def frontend_reports(self, seen_after: float) -> list[FrontendReport]:
        rows = await self._read(sa.select(frontends).where(frontends.c.seen_at >= seen_after))
        return [FrontendReport(r.id, int(r.generation), json.loads(r.in_flight), r.seen_at) for r in rows]

    async def record_shadow(self, result: ShadowResult) -> None:
        await self._execute(shadow_results.insert().values(**result.__dict__, created_at=now()))

    async def shadow_results(self, since: float) -> list[ShadowResult]:
        rows = await self._read(sa.select(shadow_results).where(shadow_results.c.created_at >= since))
        return [ShadowResult(r.candidate, r.baseline, r.iou, r.latency_ms, r.error) for r in rows]

    async def version_requests(self, since: float) -> list[tuple[str, str, float | None]]:
        """(model version, status, processing ms) of every job that ran a model since ``since``."""
        rows = await self._read(
            sa.select(jobs.c.model_version, jobs.c.status, jobs.c.processing_ms).where(
                jobs.c.created_at >= since, jobs.c.model_version.is_not(None), jobs.c.started_at.is_not(None)
            )
        )
        return [(r.model_version, r.status, r.processing_ms) for r in rows]
