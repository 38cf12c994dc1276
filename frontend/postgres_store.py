"""The scale-out store: PostgreSQL through asyncpg, shared by any number of frontends.

Same interface and money rules as ``SqliteStore``. Concurrency across
processes rests on PostgreSQL itself: a reservation is one conditional
``UPDATE … WHERE credits >= cost`` (a row lock, no read-modify-write in
Python), completion and failure are conditional on the job still being
``processing``, and each runs in one transaction with its ledger row.
"""

from __future__ import annotations

import uuid
from dataclasses import fields

import asyncpg

from frontend.store import ApiKey, Completion, Job, NewJob, hash_key, key_matches, key_prefix, new_key_secret, now

MIGRATIONS = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        credits BIGINT NOT NULL CHECK (credits >= 0),
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX api_keys_prefix ON api_keys(prefix);
    CREATE TABLE ledger (
        id BIGSERIAL PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        delta BIGINT NOT NULL,
        reason TEXT NOT NULL,
        job_id TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX ledger_key ON ledger(key_id);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        batch_id TEXT,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
        input_filename TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        processing_ms DOUBLE PRECISION,
        reserved BIGINT NOT NULL DEFAULT 0,
        credits_used BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        original_width INTEGER,
        original_height INTEGER,
        output_width INTEGER,
        output_height INTEGER,
        input_bytes BIGINT,
        output_bytes BIGINT,
        output_path TEXT,
        content_type TEXT,
        expires_at DOUBLE PRECISION,
        model_version TEXT
    );
    CREATE INDEX jobs_key ON jobs(key_id);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX jobs_expires ON jobs(expires_at);
    """,
    """
    CREATE TABLE rate_hits (
        key_id TEXT NOT NULL,
        bucket TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX rate_hits_key ON rate_hits(key_id, bucket, at);
    """,
    """
    CREATE TABLE service_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL);
    """,
    """
    CREATE TABLE output_files (job_id TEXT PRIMARY KEY, data BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL);
    """,
]

_JOB_COLUMNS = [f.name for f in fields(Job) if f.name != "extra"]


class PostgresStore:
    def __init__(self, dsn: str, pool_size: int = 10) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7301)")  # one migrator at a time
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # --- keys and credits -------------------------------------------------

    @staticmethod
    def _key(row) -> ApiKey:
        return ApiKey(row["id"], row["name"], row["prefix"], int(row["credits"]), row["created_at"], row["revoked_at"])

    async def create_key(self, name: str, credits: int) -> tuple[ApiKey, str]:
        if credits < 0:
            raise ValueError("credits must be >= 0")
        secret = new_key_secret()
        key_id = uuid.uuid4().hex
        created = now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (id, name, prefix, key_hash, credits, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                key_id, name, key_prefix(secret), hash_key(secret), credits, created,
            )
            if credits:
                await conn.execute(
                    "INSERT INTO ledger (key_id, delta, reason, created_at) VALUES ($1, $2, 'initial', $3)",
                    key_id, credits, created,
                )
        return ApiKey(key_id, name, key_prefix(secret), credits, created), secret

    async def list_keys(self) -> list[ApiKey]:
        return [self._key(r) for r in await self.pool.fetch("SELECT * FROM api_keys ORDER BY created_at")]

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        return None if row is None else self._key(row)

    async def revoke_key(self, key_id: str) -> bool:
        status = await self.pool.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", now(), key_id
        )
        return status.endswith(" 1")

    async def add_credits(self, key_id: str, amount: int, reason: str = "top-up") -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            balance = await conn.fetchval(
                "UPDATE api_keys SET credits = credits + $1 WHERE id = $2 AND credits + $1 >= 0 RETURNING credits",
                amount, key_id,
            )
            if balance is None:
                raise KeyError(key_id)
            await conn.execute(
                "INSERT INTO ledger (key_id, delta, reason, created_at) VALUES ($1, $2, $3, $4)",
                key_id, amount, reason, now(),
            )
            return int(balance)

    async def authenticate(self, secret: str) -> ApiKey | None:
        rows = await self.pool.fetch(
            "SELECT * FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL", key_prefix(secret)
        )
        found = None
        for row in rows:  # compare every candidate, in constant time
            if key_matches(secret, row["key_hash"]):
                found = self._key(row)
        return found

    async def ledger_sum(self, key_id: str) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(SUM(delta), 0) FROM ledger WHERE key_id = $1", key_id))

    # --- jobs -------------------------------------------------------------

    async def reserve_jobs(self, key_id: str, batch_id: str | None, jobs: list[NewJob]) -> list[bool]:
        results = []
        created = now()
        async with self.pool.acquire() as conn, conn.transaction():
            for job in jobs:
                ok = await conn.fetchval(
                    "UPDATE api_keys SET credits = credits - $1 WHERE id = $2 AND credits >= $1 RETURNING true",
                    job.cost, key_id,
                ) is not None
                await self._insert_job(conn, key_id, batch_id, job, created, "processing" if ok else "failed",
                                       job.cost if ok else 0, None if ok else "Insufficient credits")
                if ok:
                    await conn.execute(
                        "INSERT INTO ledger (key_id, delta, reason, job_id, created_at) VALUES ($1, $2, 'reserve', $3, $4)",
                        key_id, -job.cost, job.id, created,
                    )
                results.append(ok)
        return results

    async def record_failed(self, key_id: str, batch_id: str | None, job: NewJob, error: str) -> None:
        async with self.pool.acquire() as conn:
            await self._insert_job(conn, key_id, batch_id, job, now(), "failed", 0, error)

    @staticmethod
    async def _insert_job(conn, key_id, batch_id, job: NewJob, created, status, reserved, error) -> None:
        await conn.execute(
            "INSERT INTO jobs (id, key_id, batch_id, kind, status, input_filename, created_at, started_at,"
            " finished_at, reserved, error, original_width, original_height, input_bytes)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            job.id, key_id, batch_id, job.kind, status, job.input_filename, created,
            created if status == "processing" else None, created if status == "failed" else None,
            reserved, error, job.original_width, job.original_height, job.input_bytes,
        )

    async def complete_job(self, job_id: str, done: Completion) -> bool:
        status = await self.pool.execute(
            "UPDATE jobs SET status = 'completed', credits_used = reserved, finished_at = $1, processing_ms = $2,"
            " output_path = $3, content_type = $4, output_width = $5, output_height = $6, output_bytes = $7,"
            " expires_at = $8, model_version = $9 WHERE id = $10 AND status = 'processing'",
            now(), done.processing_ms, done.output_path, done.content_type, done.output_width, done.output_height,
            done.output_bytes, done.expires_at, done.model_version, job_id,
        )
        return status.endswith(" 1")

    async def fail_job(self, job_id: str, error: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._fail(conn, job_id, error)

    @staticmethod
    async def _fail(conn, job_id: str, error: str) -> bool:
        row = await conn.fetchrow(
            "UPDATE jobs SET status = 'failed', error = $1, credits_used = 0, finished_at = $2"
            " WHERE id = $3 AND status = 'processing' RETURNING key_id, reserved",
            error, now(), job_id,
        )
        if row is None:
            return False
        if row["reserved"]:
            await conn.execute("UPDATE api_keys SET credits = credits + $1 WHERE id = $2", row["reserved"], row["key_id"])
            await conn.execute(
                "INSERT INTO ledger (key_id, delta, reason, job_id, created_at) VALUES ($1, $2, 'release', $3, $4)",
                row["key_id"], row["reserved"], job_id, now(),
            )
        return True

    async def fail_stale_processing(self, error: str, older_than_s: float = 0.0) -> int:
        """Refund jobs left ``processing``; with other frontends running, only those older than any request can be."""
        ids = [r["id"] for r in await self.pool.fetch(
            "SELECT id FROM jobs WHERE status = 'processing' AND started_at <= $1", now() - older_than_s)]
        async with self.pool.acquire() as conn, conn.transaction():
            for job_id in ids:
                await self._fail(conn, job_id, error)
        return len(ids)

    @staticmethod
    def _job(row) -> Job:
        values = {name: row[name] for name in _JOB_COLUMNS}
        for name in ("reserved", "credits_used", "input_bytes", "output_bytes"):
            if values[name] is not None:
                values[name] = int(values[name])
        return Job(**values)

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        return None if row is None else self._job(row)

    async def expired_outputs(self, before: float) -> list[Job]:
        rows = await self.pool.fetch("SELECT * FROM jobs WHERE output_path IS NOT NULL AND expires_at < $1", before)
        return [self._job(r) for r in rows]

    async def get_state(self, name: str) -> str | None:
        return await self.pool.fetchval("SELECT value FROM service_state WHERE name = $1", name)

    async def set_state(self, name: str, value: str) -> None:
        await self.pool.execute(
            "INSERT INTO service_state (name, value, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            name, value, now(),
        )

    async def set_state_if_absent(self, name: str, value: str) -> None:
        await self.pool.execute(
            "INSERT INTO service_state (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            name, value, now(),
        )

    async def put_file(self, job_id: str, data: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO output_files (job_id, data, created_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (job_id) DO UPDATE SET data = excluded.data", job_id, data, now(),
        )

    async def get_file(self, job_id: str) -> bytes | None:
        return await self.pool.fetchval("SELECT data FROM output_files WHERE job_id = $1", job_id)

    async def delete_file(self, job_id: str) -> None:
        await self.pool.execute("DELETE FROM output_files WHERE job_id = $1", job_id)

    async def forget_output(self, job_id: str) -> None:
        await self.pool.execute("UPDATE jobs SET output_path = NULL WHERE id = $1", job_id)

    # --- shared rate limits -------------------------------------------------

    async def rate_hit(self, key_id: str, bucket: str, limit: int, window_s: float, at: float) -> tuple[bool, int, float | None]:
        """Sliding window shared by every frontend: (allowed, hits in window, oldest hit)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{key_id}:{bucket}")
            await conn.execute("DELETE FROM rate_hits WHERE key_id = $1 AND bucket = $2 AND at <= $3",
                               key_id, bucket, at - window_s)
            count = await conn.fetchval("SELECT COUNT(*) FROM rate_hits WHERE key_id = $1 AND bucket = $2", key_id, bucket)
            allowed = count < limit
            if allowed:
                await conn.execute("INSERT INTO rate_hits (key_id, bucket, at) VALUES ($1, $2, $3)", key_id, bucket, at)
                count += 1
            oldest = await conn.fetchval("SELECT MIN(at) FROM rate_hits WHERE key_id = $1 AND bucket = $2", key_id, bucket)
            return allowed, int(count), oldest
