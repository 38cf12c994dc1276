"""The settlement journal in local durable state: an SQLite file in the data directory (the standard library's
driver), written only when a request meets a database fault, read until the database takes what it owes.

It lives beside the frontend, not in the database it stands in for: a fault
that stops the store cannot stop the journal. Each write is one committed
transaction (``synchronous=FULL``), so an entry survives a crash of the
frontend; the next start settles it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from maskserve.frontend.domain.jobs import Owed

SCHEMA = """CREATE TABLE IF NOT EXISTS owed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT,
    error TEXT NOT NULL,
    revoke INTEGER NOT NULL,
    locations TEXT NOT NULL,
    idem_key_id TEXT,
    idem_key TEXT,
    created_at REAL NOT NULL
)"""


class LocalJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(SCHEMA)
            self._conn = conn
        return self._conn

    def _owe(self, entries: list[Owed]) -> None:
        rows = [
            (
                e.job_id,
                e.error,
                int(e.revoke),
                json.dumps(list(e.locations)),
                e.idempotency[0] if e.idempotency else None,
                e.idempotency[1] if e.idempotency else None,
                time.time(),
            )
            for e in entries
        ]
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO owed (job_id, error, revoke, locations, idem_key_id, idem_key, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")

    def _pending(self, limit: int) -> list[Owed]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT id, job_id, error, revoke, locations, idem_key_id, idem_key FROM owed ORDER BY id LIMIT ?",
                (limit,),
            )
            return [
                Owed(
                    job_id=job_id,
                    error=error,
                    revoke=bool(revoke),
                    locations=tuple(json.loads(locations)),
                    idempotency=(idem_key_id, idem_key) if idem_key_id is not None else None,
                    id=entry_id,
                )
                for entry_id, job_id, error, revoke, locations, idem_key_id, idem_key in rows.fetchall()
            ]

    def _settled(self, entry_ids: list[int]) -> None:
        with self._lock:
            self._connection().executemany("DELETE FROM owed WHERE id = ?", [(i,) for i in entry_ids])

    async def owe(self, entries: list[Owed]) -> None:
        if entries:
            await asyncio.to_thread(self._owe, entries)

    async def pending(self, limit: int = 100) -> list[Owed]:
        if self._conn is None and not self.path.exists():
            return []  # nothing was ever owed: no file to create
        return await asyncio.to_thread(self._pending, limit)

    async def settled(self, entry_ids: list[int]) -> None:
        if entry_ids:
            await asyncio.to_thread(self._settled, entry_ids)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
