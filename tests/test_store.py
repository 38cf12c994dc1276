"""One store test suite, run on both backends: SQLite (embedded) and PostgreSQL (shared)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from frontend.config import Settings
from frontend.store import Completion, NewJob, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path)
    return Settings(data_dir=tmp_path, database_url=request.getfixturevalue("postgres_url"))


def run(settings: Settings, scenario):
    async def main():
        store = open_store(settings)
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def job(cost: int = 1) -> NewJob:
    return NewJob(uuid.uuid4().hex, "segmentation", cost, "a.jpg", 100, 10, 10)


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


def test_shared_rate_window_on_postgresql(postgres_url, tmp_path):
    from frontend.ratelimit import SharedRateLimiter

    settings = Settings(data_dir=tmp_path, database_url=postgres_url)

    async def scenario(store):
        # two limiters on one database stand for two frontends
        first, second = SharedRateLimiter({"batch": 3}, store), SharedRateLimiter({"batch": 3}, store)
        decisions = [await (first if i % 2 else second).check("key", "batch") for i in range(4)]
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
