"""Cost and timing headers, and extraction styling's parameters, through the handlers over the fake model tier."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from maskserve.devtools.pictures import image_bytes, png_mask
from tests.plugins.calls import EXT, POINT, SEG, auth, form

STAGE = re.compile(r"^[a-z]+(;desc=[a-z]+)?(;dur=[0-9]+\.[0-9])?$")


def stages(header: str) -> dict[str, str]:
    parts = [p.strip() for p in header.split(",")]
    assert all(STAGE.match(p) for p in parts), header
    return {p.split(";")[0]: p for p in parts}


async def test_single_responses_say_what_they_cost_and_where_the_time_went(client, new_key):
    _, secret = await new_key(10)
    photo = image_bytes(seed=41)
    first = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=auth(secret))
    assert first.status == 200
    assert first.headers["X-Credits-Charged"] == "1" and first.headers["X-Credits-Remaining"] == "9"
    assert first.headers["X-Model-Version"] == "sam2.1_hiera_tiny/1"
    assert list(stages(first.headers["Server-Timing"])) == ["decode", "encode", "render", "store"]
    again = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=auth(secret))
    timing = stages(again.headers["Server-Timing"])
    assert list(timing) == ["decode", "embeddings", "mask", "render", "store"]
    assert timing["embeddings"] == "embeddings;desc=cached"
    assert again.headers["X-Credits-Remaining"] == "8"


async def test_batches_sum_their_stages_and_uploaded_masks_name_no_model(client, new_key):
    _, secret = await new_key(10)
    r = await client.post(
        f"{SEG}/batch?points={POINT}",
        data=form("files", image_bytes(seed=42), image_bytes(seed=43)),
        headers=auth(secret),
    )
    assert r.status == 200 and r.headers["X-Credits-Charged"] == "2" and r.headers["X-Credits-Remaining"] == "8"
    assert "encode" in stages(r.headers["Server-Timing"])
    data = aiohttp.FormData()
    data.add_field("image", image_bytes(), filename="a.jpg", content_type="image/jpeg")
    data.add_field("mask", png_mask(640, 480, (10, 10, 100, 100)), filename="m.png", content_type="image/png")
    r = await client.post(EXT, data=data, headers=auth(secret))
    assert r.status == 200 and r.headers["X-Credits-Charged"] == "2" and r.headers["X-Credits-Remaining"] == "6"
    assert "X-Model-Version" not in r.headers
    assert list(stages(r.headers["Server-Timing"])) == ["decode", "render", "store"]


async def test_failed_batch_items_are_not_counted_as_charged(client, new_key, fake):
    _, secret = await new_key(10)
    fake.reject = "image is not a JPEG, PNG or WebP"
    r = await client.post(f"{SEG}/batch?points={POINT}", data=form("files", image_bytes(seed=44)), headers=auth(secret))
    assert r.status == 200 and r.headers["X-Credits-Charged"] == "0" and r.headers["X-Credits-Remaining"] == "10"


async def test_a_retry_with_the_same_idempotency_key_replays_and_charges_nothing(client, new_key):
    _, secret = await new_key(10)
    photo = image_bytes(seed=45)
    retry = {**auth(secret), "Idempotency-Key": "order-17/attempt"}
    first = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    again = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert again.headers["X-Credits-Charged"] == "0" and again.headers["X-Credits-Remaining"] == "9"
    assert again.headers["X-Model-Version"] == first.headers["X-Model-Version"]
    assert again.headers["Server-Timing"].startswith("replay;dur=")
    other = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=46)), headers=retry)
    assert other.status == 422
    assert (await other.json())["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    _, someone = await new_key(10)  # keys are scoped to the API key
    theirs = await client.post(
        f"{SEG}?points={POINT}",
        data=form("file", photo),
        headers={**auth(someone), "Idempotency-Key": "order-17/attempt"},
    )
    assert theirs.status == 200 and "Idempotent-Replayed" not in theirs.headers


async def test_a_refused_request_leaves_its_idempotency_key_free(client, new_key):
    from maskserve.frontend.http.state import STORE

    key_id, secret = await new_key(0)
    retry = {**auth(secret), "Idempotency-Key": "k1"}
    photo = image_bytes(seed=47)
    assert (await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)).status == 402
    await client.app[STORE].add_credits(key_id, 1)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    assert r.status == 200 and "Idempotent-Replayed" not in r.headers


async def test_twenty_concurrent_retries_run_once(client, new_key, fake):
    from maskserve.frontend.http.state import STORE

    key_id, secret = await new_key(10)
    photo = image_bytes(seed=48)
    retry = {**auth(secret), "Idempotency-Key": "burst"}

    async def one() -> tuple[int, dict]:
        r = await client.post(f"{SEG}/batch?points={POINT}", data=form("files", photo, photo), headers=retry)
        return r.status, await r.json()

    answers = await asyncio.gather(*(one() for _ in range(20)))
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {200, 409} and 200 in statuses, statuses
    assert all(
        b == {"detail": "A request with this Idempotency-Key is still in progress"} for s, b in answers if s == 409
    )
    assert len({b["batch_id"] for s, b in answers if s == 200}) == 1
    assert fake.decodes == 2  # two images, run once
    assert await client.app[STORE].ledger_sum(key_id) == 8 and (await client.app[STORE].get_key(key_id)).credits == 8


@pytest.mark.parametrize("value", ["", "x" * 256, "naïve", "tab\there"])
async def test_malformed_idempotency_keys_get_422(client, new_key, value):
    _, secret = await new_key(10)
    r = await client.post(
        f"{SEG}?points={POINT}",
        data=form(),
        headers={**auth(secret), "Idempotency-Key": value.encode().decode("latin-1")},
    )
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["header", "Idempotency-Key"]


async def wait_for(client, path: str, secret: str, done: set[str]) -> dict:
    for _ in range(200):
        body = await (await client.get(path, headers=auth(secret))).json()
        if body["status"] in done:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(body)


async def test_async_requests_answer_202_then_finish_in_the_background(client, new_key, fake):
    key_id, secret = await new_key(10)
    r = await client.post(
        f"{SEG}?points={POINT}&async=true", data=form("file", image_bytes(seed=50)), headers=auth(secret)
    )
    assert r.status == 202, await r.text()
    body = await r.json()
    assert body["status"] == "processing" and body["result"]["output_url"] is None
    assert r.headers["X-Credits-Charged"] == "0" and r.headers["X-Credits-Remaining"] == "9"  # reserved
    job = await wait_for(client, f"/v1/jobs/{body['job_id']}", secret, {"completed", "failed"})
    assert job["status"] == "completed" and job["output_url"] and job["credits_used"] == 1
    photos = [image_bytes(seed=51), image_bytes(seed=52)]
    r = await client.post(f"{SEG}/batch?points={POINT}&async=true", data=form("files", *photos), headers=auth(secret))
    assert r.status == 202
    batch = await r.json()
    assert batch["status"] == "processing" and batch["total_files"] == 2 and batch["total_credits_used"] == 0
    done = await wait_for(client, f"/v1/batches/{batch['batch_id']}", secret, {"completed", "failed"})
    assert done["completed"] == 2 and done["total_credits_used"] == 2
    assert [j["job_id"] for j in done["results"]] == [j["job_id"] for j in batch["results"]]
    from maskserve.frontend.http.state import STORE

    store = client.app[STORE]
    assert await store.ledger_sum(key_id) == 7 and not await store.list_deferred()  # inputs forgotten once done


async def test_async_refusals_come_back_at_once_and_batches_are_private(client, new_key):
    _, secret = await new_key(0)
    r = await client.post(f"{SEG}?points={POINT}&async=true", data=form(), headers=auth(secret))
    assert r.status == 402
    r = await client.post(f"{SEG}?points={POINT}&async=maybe", data=form(), headers=auth(secret))
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "async"]
    _, rich = await new_key(10)
    r = await client.post(f"{SEG}/batch?points={POINT}", data=form("files"), headers=auth(rich))
    batch_id = (await r.json())["batch_id"]
    assert (await client.get(f"/v1/batches/{batch_id}", headers=auth(rich))).status == 200
    assert (await client.get(f"/v1/batches/{batch_id}", headers=auth(secret))).status == 404
    assert (await client.get("/v1/batches/not-an-id", headers=auth(rich))).status == 404


async def test_an_idempotency_key_is_kept_24_hours(client, new_key, tmp_path):
    import sqlite3

    _, secret = await new_key(10)
    retry = {**auth(secret), "Idempotency-Key": "daily"}
    photo = image_bytes(seed=53)
    first = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    with sqlite3.connect(tmp_path / "data" / "maskserve.db") as db:  # 23 h later: still replayed
        db.execute("UPDATE idempotency SET created_at = created_at - 23 * 3600")
    again = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    assert again.headers.get("Idempotent-Replayed") == "true"
    with sqlite3.connect(tmp_path / "data" / "maskserve.db") as db:  # 25 h after: a new request
        db.execute("UPDATE idempotency SET created_at = created_at - 2 * 3600")
    later = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=retry)
    assert later.status == 200 and "Idempotent-Replayed" not in later.headers
    assert (await later.json())["job_id"] != (await first.json())["job_id"]


def test_webhook_retries_span_about_an_hour_by_default():
    from maskserve.frontend.config import Settings
    from maskserve.frontend.services.webhooks import retry_delay

    settings = Settings()
    delays = [retry_delay(settings, n) for n in range(1, settings.webhook_attempts + 1)]
    assert delays[-1] is None and all(d is not None for d in delays[:-1])
    assert len(delays) >= 6 and 3000 <= sum(d for d in delays if d) <= 4500  # 1+2+4+8+16+32 minutes
