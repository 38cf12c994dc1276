"""The store's engine: one implementation of the money rules for SQLite and PostgreSQL.

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
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from maskserve.frontend.domain.jobs import JobStatus
from maskserve.frontend.errors import DatabaseUnavailable

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent.parent / "migrations"
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


UNREACHABLE = (
    OSError,  # refused or reset connections, timeouts
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.InternalError,  # asyncpg: a connection left mid-operation by a server that went away
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,  # the pool had no connection to give
    sqlite3.OperationalError,
)
UNREACHABLE_SQLSTATES = ("08", "53", "57")  # connection exception, insufficient resources, operator intervention
ASYNCPG_UNREACHABLE = {
    "InterfaceError",
    "InternalClientError",
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "PostgresConnectionError",
}


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database could not be reached, rather than a bug."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, UNREACHABLE) or (isinstance(seen, sa.exc.DBAPIError) and seen.connection_invalidated):
            return True
        sqlstate = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(UNREACHABLE_SQLSTATES):
            return True
        if type(seen).__module__.startswith("asyncpg") and type(seen).__name__ in ASYNCPG_UNREACHABLE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def reaching_database() -> Iterator[None]:
    """A failure to reach the database inside leaves as ``DatabaseUnavailable``; any other error as it is."""
    try:
        yield
    except Exception as exc:
        if unreachable(exc):
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


def rows_of(conn: sa.Connection, query: sa.Executable) -> list[sa.Row[Any]]:
    return list(conn.execute(query).all())


def _upgrade(conn: sa.Connection, postgres: bool) -> None:
    if postgres:  # several frontends may start together: one migrator at a time
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


class Database:
    """Connections, transactions and migrations; the operations are written over ``_tx`` and ``_read``."""

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
        """``fn(connection, *args)`` in one transaction; ``DatabaseUnavailable`` when it cannot reach the database."""
        with reaching_database():
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
        with reaching_database():
            if self._async is not None:
                async with self._async.connect() as conn:
                    return list((await conn.execute(query)).all())
            if self._reader is None:
                raise RuntimeError("store is not open")
            return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._sync_read, query)

    def _sync_read(self, query: sa.Executable) -> list[sa.Row[Any]]:
        assert self._reader is not None
        with self._reader.connect() as conn:
            return rows_of(conn, query)

    async def _one(self, query: sa.Executable) -> sa.Row[Any] | None:
        rows = await self._read(query)
        return rows[0] if rows else None

    # --- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self.postgres:
            self._async = create_async_engine(
                self.url,
                pool_size=self.pool_size,
                max_overflow=0,
                pool_pre_ping=True,  # a connection broken by a restart is replaced, not reused
                pool_timeout=10,
                connect_args={"timeout": 5, "command_timeout": 30},
            )
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
