"""Database faults under load, against a real PostgreSQL restarted and stopped while two frontends serve
(the model tier is the fake: the database is what is under test).

Every answer during the faults is a 2xx or a 503 that names the database (never a 500), the balance moves by
exactly what the 2xx answers charged (and the asynchronous jobs that completed), and once PostgreSQL is back
nothing stays ``processing``.
"""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import asyncpg
import pytest

from maskserve.devtools.pictures import image_bytes, png_mask
from maskserve.devtools.postgres import PostgresCluster
from maskserve.frontend.app import create_app
from maskserve.frontend.config import Settings
from maskserve.frontend.http.state import METRICS, STORE
from tests.plugins.calls import EXT, POINT, SEG, auth, form

CREDITS = 1_000_000
DATABASE_DOWN = "The database is unavailable"


@pytest.fixture()
def cluster():
    try:
        server = PostgresCluster().start()  # its own server: this test stops it
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


def _calls(seed: int) -> list[tuple[str, aiohttp.FormData]]:
    extraction = aiohttp.FormData()
    extraction.add_field("image", image_bytes(seed=seed), filename="a.jpg", content_type="image/jpeg")
    extraction.add_field("mask", png_mask(640, 480, (10, 10, 100, 100)), filename="m.png", content_type="image/png")
    return [
        (f"{SEG}?points={POINT}", form("file", image_bytes(seed=seed))),
        (EXT, extraction),
        (f"{SEG}/batch?points={POINT}", form("files", image_bytes(seed=seed), image_bytes(seed=seed + 1))),
        (f"{SEG}?points={POINT}&async=true", form("file", image_bytes(seed=seed + 2))),
    ]


async def _processing(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'processing'"))
    finally:
        await conn.close()


async def test_a_database_restart_and_outage_under_load_answer_503_and_lose_no_credit(
    aiohttp_client, tmp_path, fake, cluster, report
):
    url = await asyncio.to_thread(cluster.create_database, "faults")
    limits = {"rate_single_per_min": 100_000, "rate_batch_per_min": 100_000, "rate_read_per_min": 100_000}
    frontends = [
        await aiohttp_client(create_app(Settings(data_dir=tmp_path / f"f{i}", database_url=url, **limits), fake))
        for i in range(2)
    ]
    key, secret = await frontends[0].app[STORE].create_key("faults", CREDITS)
    statuses: collections.Counter[int] = collections.Counter()
    others: list[str] = []
    charged, accepted = 0, []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal charged
        frontend, turn = frontends[n % 2], 0
        while not stop.is_set():
            path, data = _calls(100 * n + turn % 50)[(n + turn) % 4]
            turn += 1
            try:
                r = await frontend.post(path, data=data, headers=auth(secret))
                body = await r.json()
            except aiohttp.ClientError as exc:
                others.append(f"{type(exc).__name__}: {exc}")
                continue
            statuses[r.status] += 1
            if r.status in (200, 202):
                charged += int(r.headers["X-Credits-Charged"])
                if r.status == 202:
                    accepted.append(body["job_id"])
            elif r.status == 503 and body == {"detail": DATABASE_DOWN}:
                assert r.headers["Retry-After"]
            else:
                others.append(f"{r.status} {body}")
            await asyncio.sleep(0.01)

    clients = [asyncio.ensure_future(client(n)) for n in range(4)]
    await asyncio.sleep(1.5)
    await asyncio.to_thread(cluster.halt)  # a restart: pg_ctl stop -m fast, then start at once
    await asyncio.to_thread(cluster.resume)
    await asyncio.sleep(1.5)
    after_restart = statuses[503]
    await asyncio.to_thread(cluster.halt)  # then an outage of 4 s
    outage = time.monotonic()
    await asyncio.sleep(4)
    while_down = statuses[503] - after_restart
    await asyncio.to_thread(cluster.resume)
    back = time.monotonic()
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*clients)

    assert not others, others[:5]
    assert set(statuses) <= {200, 202, 503} and statuses[503] > 0 and statuses[200] > 0, statuses
    deadline = time.monotonic() + 20
    while (left := await _processing(url)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    settled_s = time.monotonic() - back
    assert left == 0, f"{left} jobs still processing {settled_s:.1f} s after PostgreSQL came back"
    store = frontends[0].app[STORE]
    async_charged = sum(j.credits_used for j in await store.get_jobs(accepted))
    balance = (await store.get_key(key.id)).credits
    assert CREDITS - balance == charged + async_charged, (CREDITS - balance, charged, async_charged)
    settled = {
        outcome: sum(
            f.app[METRICS].registry.get_sample_value("maskserve_settlements_total", {"outcome": outcome}) or 0
            for f in frontends
        )
        for outcome in ("refunded", "revoked", "kept", "released")
    }
    report(
        f"database restart + {back - outage:.0f} s outage under 4 clients on 2 frontends: "
        f"{sum(statuses.values())} answers {dict(sorted(statuses.items()))}, 0 x 500; "
        f"{CREDITS - balance} credits charged = the 2xx answers' {charged} + completed async {async_charged}; "
        f"nothing processing {settled_s:.1f} s after PostgreSQL was back; 503s: {after_restart} around the "
        f"restart, {while_down} during the outage; "
        f"journal entries settled: {settled}"
    )
