"""One store test suite, run on both backends: SQLite (embedded) and PostgreSQL (shared)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from maskserve.frontend.adapters.store import build_store
from maskserve.frontend.config import Settings
from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.domain.jobs import Completion, JobKind, NewJob


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path)
    return Settings(data_dir=tmp_path, database_url=request.getfixturevalue("postgres_url"))


def run(settings: Settings, scenario):
    async def main():
        store = build_store(settings)
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def job(cost: int = 1) -> NewJob:
    kind = {1: JobKind.SEGMENTATION, 2: JobKind.EXTRACTION}[cost]
    return NewJob(uuid.uuid4().hex, kind, "a.jpg", 100, 10, 10)


def done(path: str = "/x") -> Completion:
    return Completion(path, "image/png", 10, 10, 5, 1.0, time.time() + 60, "v1")


def test_keys(settings):
    async def scenario(store):
        key, secret = await store.create_key("k", 5)
        assert (await store.authenticate(secret)).id == key.id
        assert await store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
        assert [k.id for k in await store.list_keys()] == [key.id]
        assert await store.revoke_key(key.id) and not await store.revoke_key(key.id)
        assert await store.authenticate(secret) is None
        assert await store.add_credits(key.id, 7) == 12
        with pytest.raises(KeyError):
            await store.add_credits(key.id, -100)
        assert await store.ledger_sum(key.id) == 12

    run(settings, scenario)


def test_reserve_complete_fail_and_ledger(settings):
    async def scenario(store):
        key, _ = await store.create_key("k", 3)
        a, b, c = job(2), job(2), job(1)
        assert await store.reserve_jobs(key.id, "batch", [a, b, c]) == [True, False, True]
        assert (await store.get_key(key.id)).credits == 0
        assert (await store.get_job(b.id)).error == "Insufficient credits"
        assert await store.complete_job(a.id, done()) and not await store.complete_job(a.id, done())
        assert not await store.fail_job(a.id, "late")  # completed stays completed
        assert await store.fail_job(c.id, "boom") and not await store.fail_job(c.id, "again")
        key_now = await store.get_key(key.id)
        assert key_now.credits == 1 and await store.ledger_sum(key.id) == 1
        a_job, c_job = await store.get_job(a.id), await store.get_job(c.id)
        assert (a_job.status, a_job.credits_used, a_job.model_version) == ("completed", 2, "v1")
        assert (c_job.status, c_job.credits_used, c_job.error) == ("failed", 0, "boom")

    run(settings, scenario)


def test_concurrent_reservations_never_overdraw(settings):
    async def scenario(store):
        key, _ = await store.create_key("k", 20)
        results = await asyncio.gather(*(store.reserve_jobs(key.id, None, [job()]) for _ in range(60)))
        assert sum(r[0] for r in results) == 20
        assert (await store.get_key(key.id)).credits == 0 and await store.ledger_sum(key.id) == 0

    run(settings, scenario)


def test_stale_processing_and_expired_outputs(settings):
    async def scenario(store):
        key, _ = await store.create_key("k", 5)
        a, b = job(), job()
        await store.reserve_jobs(key.id, None, [a, b])
        await store.complete_job(a.id, Completion("/f", "image/png", 1, 1, 1, 1.0, time.time() - 5, "v"))
        assert await store.fail_stale_processing("restart") == 1
        assert (await store.get_key(key.id)).credits == 4
        assert [j.id for j in await store.expired_outputs(time.time())] == [a.id]
        await store.forget_output(a.id)
        assert await store.expired_outputs(time.time()) == []

    run(settings, scenario)


def test_shared_rate_window(settings):
    from maskserve.frontend.adapters.ratelimit import SharedRateLimiter

    async def scenario(store):
        # two limiters on one database stand for two frontends
        limits = {RateBucket.BATCH: 3}
        first, second = SharedRateLimiter(limits, store), SharedRateLimiter(limits, store)
        decisions = [await (first if i % 2 else second).check("key", RateBucket.BATCH) for i in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert decisions[-1].remaining == 0 and 1 <= decisions[-1].reset_s <= 60

    run(settings, scenario)


def test_service_state(settings):
    async def scenario(store):
        assert await store.get_state("active_model_version") is None
        await store.set_state("active_model_version", "1")
        await store.set_state("active_model_version", "2")
        assert await store.get_state("active_model_version") == "2"

    run(settings, scenario)


def test_only_old_processing_jobs_are_swept_when_shared(settings):
    async def scenario(store):
        key, _ = await store.create_key("k", 2)
        await store.reserve_jobs(key.id, None, [job()])
        assert await store.fail_stale_processing("x", older_than_s=3600) == 0  # may belong to a live frontend
        assert await store.fail_stale_processing("x") == 1
        assert (await store.get_key(key.id)).credits == 2

    run(settings, scenario)


def test_output_file_rows(settings):
    from maskserve.frontend.adapters.files import DatabaseFiles

    async def scenario(store):
        files = DatabaseFiles(store)
        job_id = uuid.uuid4().hex
        location = await files.put(job_id, "png", b"\x89PNG...")
        assert await files.get(location) == b"\x89PNG..."
        await files.remove(location)
        assert await files.get(location) is None
        with pytest.raises(ValueError):
            await files.put("../etc/passwd", "png", b"")

    run(settings, scenario)


def test_migrated_schema_matches_the_table_definitions(settings):
    """Alembic's autogenerate comparison finds nothing between the migrated database and tables.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from maskserve.frontend.adapters.tables import metadata

    def compare(conn):
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        return diff, conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    async def scenario(store):
        diff, version = await store._tx(compare)
        assert diff == [], diff
        assert version == "0009"

    run(settings, scenario)


def test_a_database_from_before_alembic_is_adopted(tmp_path):
    """The old embedded schema (schema_version 2, no rate or file tables) keeps its keys and jobs."""
    import sqlite3

    settings = Settings(data_dir=tmp_path)
    with sqlite3.connect(settings.database_path) as db:
        db.executescript(LEGACY_SQLITE)

    async def scenario(store):
        key = await store.get_key("k1")
        assert key is not None and key.credits == 7 and await store.ledger_sum("k1") == 7
        assert (await store.get_job("j1")).status == "completed"
        await store.put_file("0" * 32, b"x")  # the tables it lacked exist now
        assert (await store.get_routing()).active == "1"  # the promoted version, now in the routing

    run(settings, scenario)
    with sqlite3.connect(settings.database_path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "schema_version" not in names and {"rate_hits", "output_files", "alembic_version"} <= names


LEGACY_SQLITE = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    credits INTEGER NOT NULL CHECK (credits >= 0), created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL REFERENCES api_keys(id),
    delta INTEGER NOT NULL, reason TEXT NOT NULL, job_id TEXT, created_at REAL NOT NULL);
CREATE TABLE jobs (id TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES api_keys(id), batch_id TEXT, kind TEXT NOT NULL,
    status TEXT NOT NULL, input_filename TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    processing_ms REAL, reserved INTEGER NOT NULL DEFAULT 0, credits_used INTEGER NOT NULL DEFAULT 0, error TEXT,
    original_width INTEGER, original_height INTEGER, output_width INTEGER, output_height INTEGER, input_bytes INTEGER,
    output_bytes INTEGER, output_path TEXT, content_type TEXT, expires_at REAL, model_version TEXT);
CREATE TABLE service_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1), (2);
INSERT INTO api_keys VALUES ('k1', 'old', 'sk-live-abcdefgh', 'h', 7, 1.0, NULL);
INSERT INTO ledger (key_id, delta, reason, created_at) VALUES ('k1', 8, 'initial', 1.0), ('k1', -1, 'reserve', 2.0);
INSERT INTO jobs (id, key_id, kind, status, created_at, reserved, credits_used)
    VALUES ('j1', 'k1', 'segmentation', 'completed', 2.0, 1, 1);
INSERT INTO service_state VALUES ('active_model_version', '1', 3.0);
"""


def test_a_promoted_version_of_the_previous_schema_becomes_the_routing(settings):
    """Revision 0001 kept the promoted version in its own row; 0002 moves it into the routing."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import create_async_engine

    from maskserve.frontend.adapters.store import MIGRATIONS, database_url

    def to_0001(conn: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(sa.text("INSERT INTO service_state VALUES ('active_model_version', '3', 0)"))

    url = database_url(settings.database_url, settings.data_dir / "maskserve.db")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            to_0001(conn)
        engine.dispose()
    else:

        async def migrate() -> None:
            async_engine = create_async_engine(url)
            async with async_engine.begin() as conn:
                await conn.run_sync(to_0001)
            await async_engine.dispose()

        asyncio.run(migrate())

    async def scenario(store):
        routing = await store.get_routing()
        assert routing.active == "3" and routing.generation == 1 and routing.canary is None
        assert await store.get_state("active_model_version") is None

    run(settings, scenario)


def test_the_same_handle_kept_by_many_requests_at_once(settings):
    """Two first uploads of one image by one key at once (the release test found it): both keep the handle."""
    from maskserve.frontend.domain.images import ImageHandle

    async def scenario(store):
        key, _ = await store.create_key("k", 5)
        now = time.time()

        def handle(expires: float) -> ImageHandle:
            return ImageHandle(
                "img_" + "a" * 32, key.id, "d" * 64, "loc", "a.jpg", "file", 8, 6, 100, now, now, expires
            )

        await asyncio.gather(*(store.save_image(handle(now + 60 + i)) for i in range(8)))
        kept = await store.get_image("img_" + "a" * 32)
        assert kept is not None and kept.key_id == key.id and now + 60 <= kept.expires_at <= now + 67

    run(settings, scenario)
