"""The embedded store: one SQLite file in WAL mode, through aiosqlite.

Each process holds one connection; an asyncio lock keeps one transaction at a
time on it, and SQLite's own locking (``BEGIN IMMEDIATE`` with a busy timeout)
serialises this process against others on the same file, such as the admin
commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import aiosqlite

from frontend.store import (
    ApiKey,
    Completion,
    Job,
    NewJob,
    hash_key,
    key_matches,
    key_prefix,
    new_key_secret,
    now,
)

MIGRATIONS = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        credits INTEGER NOT NULL CHECK (credits >= 0),
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX api_keys_prefix ON api_keys(prefix);
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        delta INTEGER NOT NULL,
        reason TEXT NOT NULL,
        job_id TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX ledger_key ON ledger(key_id);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        batch_id TEXT,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
        input_filename TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        processing_ms REAL,
        reserved INTEGER NOT NULL DEFAULT 0,
        credits_used INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        original_width INTEGER,
        original_height INTEGER,
        output_width INTEGER,
        output_height INTEGER,
        input_bytes INTEGER,
        output_bytes INTEGER,
        output_path TEXT,
        content_type TEXT,
        expires_at REAL,
        model_version TEXT
    );
    CREATE INDEX jobs_key ON jobs(key_id);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX jobs_expires ON jobs(expires_at);
    """,
    """
    CREATE TABLE service_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    """,
]

_JOB_COLUMNS = [f.name for f in fields(Job) if f.name != "extra"]


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA busy_timeout=10000")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            else:
                await self.db.execute("COMMIT")

    async def _migrate(self) -> None:
        async with self._tx() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await (await db.execute("SELECT MAX(version) FROM schema_version")).fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    for statement in filter(str.strip, script.split(";")):
                        await db.execute(statement)
                    await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def ping(self) -> None:
        await (await self.db.execute("SELECT 1")).fetchone()

    # --- keys and credits -------------------------------------------------

    @staticmethod
    def _key(row) -> ApiKey:
        return ApiKey(row["id"], row["name"], row["prefix"], row["credits"], row["created_at"], row["revoked_at"])

    async def create_key(self, name: str, credits: int) -> tuple[ApiKey, str]:
        if credits < 0:
            raise ValueError("credits must be >= 0")
        secret = new_key_secret()
        key_id = uuid.uuid4().hex
        created = now()
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO api_keys (id, name, prefix, key_hash, credits, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, key_prefix(secret), hash_key(secret), credits, created),
            )
            if credits:
                await db.execute(
                    "INSERT INTO ledger (key_id, delta, reason, created_at) VALUES (?, ?, 'initial', ?)",
                    (key_id, credits, created),
                )
        return ApiKey(key_id, name, key_prefix(secret), credits, created), secret

    async def list_keys(self) -> list[ApiKey]:
        cursor = await self.db.execute("SELECT * FROM api_keys ORDER BY created_at")
        return [self._key(r) for r in await cursor.fetchall()]

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await (await self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,))).fetchone()
        return None if row is None else self._key(row)

    async def revoke_key(self, key_id: str) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now(), key_id)
            )
            return cursor.rowcount == 1

    async def add_credits(self, key_id: str, amount: int, reason: str = "top-up") -> int:
        async with self._tx() as db:
            cursor = await db.execute(
                "UPDATE api_keys SET credits = credits + ? WHERE id = ? AND credits + ? >= 0",
                (amount, key_id, amount),
            )
            if cursor.rowcount != 1:
                raise KeyError(key_id)
            await db.execute(
                "INSERT INTO ledger (key_id, delta, reason, created_at) VALUES (?, ?, ?, ?)",
                (key_id, amount, reason, now()),
            )
            row = await (await db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,))).fetchone()
            return int(row[0])

    async def authenticate(self, secret: str) -> ApiKey | None:
        cursor = await self.db.execute(
            "SELECT * FROM api_keys WHERE prefix = ? AND revoked_at IS NULL", (key_prefix(secret),)
        )
        found = None
        for row in await cursor.fetchall():  # compare every candidate, in constant time
            if key_matches(secret, row["key_hash"]):
                found = self._key(row)
        return found

    async def ledger_sum(self, key_id: str) -> int:
        row = await (await self.db.execute("SELECT COALESCE(SUM(delta), 0) FROM ledger WHERE key_id = ?", (key_id,))).fetchone()
        return int(row[0])

    # --- jobs -------------------------------------------------------------

    async def reserve_jobs(self, key_id: str, batch_id: str | None, jobs: list[NewJob]) -> list[bool]:
        """In order: reserve each job's cost if the balance covers it, else record it failed."""
        results = []
        created = now()
        async with self._tx() as db:
            for job in jobs:
                cursor = await db.execute(
                    "UPDATE api_keys SET credits = credits - ? WHERE id = ? AND credits >= ?",
                    (job.cost, key_id, job.cost),
                )
                ok = cursor.rowcount == 1
                await self._insert_job(db, key_id, batch_id, job, created, "processing" if ok else "failed",
                                       reserved=job.cost if ok else 0, error=None if ok else "Insufficient credits")
                if ok:
                    await db.execute(
                        "INSERT INTO ledger (key_id, delta, reason, job_id, created_at) VALUES (?, ?, 'reserve', ?, ?)",
                        (key_id, -job.cost, job.id, created),
                    )
                results.append(ok)
        return results

    async def record_failed(self, key_id: str, batch_id: str | None, job: NewJob, error: str) -> None:
        async with self._tx() as db:
            await self._insert_job(db, key_id, batch_id, job, now(), "failed", reserved=0, error=error)

    @staticmethod
    async def _insert_job(db, key_id, batch_id, job: NewJob, created, status, reserved, error) -> None:
        await db.execute(
            "INSERT INTO jobs (id, key_id, batch_id, kind, status, input_filename, created_at, started_at,"
            " finished_at, reserved, error, original_width, original_height, input_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, key_id, batch_id, job.kind, status, job.input_filename, created,
             created if status == "processing" else None, created if status == "failed" else None,
             reserved, error, job.original_width, job.original_height, job.input_bytes),
        )

    async def complete_job(self, job_id: str, done: Completion) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(
                "UPDATE jobs SET status = 'completed', credits_used = reserved, finished_at = ?,"
                " processing_ms = ?, output_path = ?, content_type = ?, output_width = ?, output_height = ?,"
                " output_bytes = ?, expires_at = ?, model_version = ? WHERE id = ? AND status = 'processing'",
                (now(), done.processing_ms, done.output_path, done.content_type, done.output_width,
                 done.output_height, done.output_bytes, done.expires_at, done.model_version, job_id),
            )
            return cursor.rowcount == 1

    async def fail_job(self, job_id: str, error: str) -> bool:
        async with self._tx() as db:
            return await self._fail(db, job_id, error)

    @staticmethod
    async def _fail(db, job_id: str, error: str) -> bool:
        row = await (await db.execute(
            "SELECT key_id, reserved FROM jobs WHERE id = ? AND status = 'processing'", (job_id,)
        )).fetchone()
        if row is None:
            return False
        stamp = now()
        await db.execute(
            "UPDATE jobs SET status = 'failed', error = ?, credits_used = 0, finished_at = ? WHERE id = ?",
            (error, stamp, job_id),
        )
        if row["reserved"]:
            await db.execute("UPDATE api_keys SET credits = credits + ? WHERE id = ?", (row["reserved"], row["key_id"]))
            await db.execute(
                "INSERT INTO ledger (key_id, delta, reason, job_id, created_at) VALUES (?, ?, 'release', ?, ?)",
                (row["key_id"], row["reserved"], job_id, stamp),
            )
        return True

    async def fail_stale_processing(self, error: str, older_than_s: float = 0.0) -> int:
        """Jobs a previous process left ``processing`` (and older than ``older_than_s``) are failed and refunded."""
        cursor = await self.db.execute(
            "SELECT id FROM jobs WHERE status = 'processing' AND started_at <= ?", (now() - older_than_s,))
        ids = [r[0] for r in await cursor.fetchall()]
        async with self._tx() as db:
            for job_id in ids:
                await self._fail(db, job_id, error)
        return len(ids)

    @staticmethod
    def _job(row) -> Job:
        return Job(**{name: row[name] for name in _JOB_COLUMNS})

    async def get_job(self, job_id: str) -> Job | None:
        row = await (await self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))).fetchone()
        return None if row is None else self._job(row)

    async def expired_outputs(self, before: float) -> list[Job]:
        cursor = await self.db.execute(
            "SELECT * FROM jobs WHERE output_path IS NOT NULL AND expires_at < ?", (before,)
        )
        return [self._job(r) for r in await cursor.fetchall()]

    async def get_state(self, name: str) -> str | None:
        row = await (await self.db.execute("SELECT value FROM service_state WHERE name = ?", (name,))).fetchone()
        return None if row is None else row[0]

    async def set_state_if_absent(self, name: str, value: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO service_state (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, value, now()),
            )

    async def set_state(self, name: str, value: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO service_state (name, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (name, value, now()),
            )

    async def forget_output(self, job_id: str) -> None:
        async with self._tx() as db:
            await db.execute("UPDATE jobs SET output_path = NULL WHERE id = ?", (job_id,))
