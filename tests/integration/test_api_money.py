"""Credits under concurrency and in batches: exact charges and a consistent ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from urllib.parse import quote

import aiohttp

from maskserve.devtools.pictures import image_bytes

SEG = "/v1/services/image-segmentation"


def _ledger(api, key_id: str) -> tuple[int, int, list[tuple]]:
    """(balance, ledger sum, job rows) read straight from the database file."""
    with sqlite3.connect(api.settings.database_path) as db:
        balance = db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]
        total = db.execute("SELECT SUM(delta) FROM ledger WHERE key_id = ?", (key_id,)).fetchone()[0]
        jobs = db.execute(
            "SELECT status, credits_used, reserved, error FROM jobs WHERE key_id = ?", (key_id,)
        ).fetchall()
    return balance, total, jobs


async def _post_many(url: str, secret: str, bodies: list[tuple[str, bytes]], field: str) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def one(name: str, data: bytes):
            form = aiohttp.FormData()
            form.add_field(field, data, filename=name, content_type="image/jpeg")
            async with session.post(url, data=form, headers={"Authorization": f"Bearer {secret}"}) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(one(n, d) for n, d in bodies))


def test_30_concurrent_requests_on_10_credits(api):
    key_id, secret = api.create_key(10)
    photo = image_bytes(480, 360, seed=123)
    url = f"{api.url}{SEG}?points={quote(json.dumps([[200, 150]]))}"
    results = asyncio.run(_post_many(url, secret, [(f"p{i}.jpg", photo) for i in range(30)], "file"))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) == 10 and statuses.count(402) == 20, statuses
    assert all(body == {"detail": "Insufficient credits"} for status, body in results if status == 402)
    balance, total, jobs = _ledger(api, key_id)
    assert balance == 0 and total == 0  # 10 granted, 10 charged
    completed = [j for j in jobs if j[0] == "completed"]
    assert len(completed) == 10 and all(j[1] == 1 for j in completed)
    assert not [j for j in jobs if j[0] == "processing"]
    assert sum(j[1] for j in jobs) == 10


def test_batch_of_5_with_3_credits(api):
    key_id, secret = api.create_key(3)
    form = [("files", (f"img{i}.jpg", image_bytes(320, 240, seed=200 + i), "image/jpeg")) for i in range(5)]
    import requests

    r = requests.post(
        f"{api.url}{SEG}/batch?box={quote(json.dumps([5, 5, 300, 200]))}",
        files=form,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["completed"] == 3 and body["failed"] == 2
    assert body["total_credits_used"] == 3
    failed = [x for x in body["results"] if x["status"] == "failed"]
    assert len(failed) == 2
    for item in failed:
        assert item["error"] == "Insufficient credits" and item["credits_used"] == 0 and item["output_url"] is None
    assert [x["input_filename"] for x in body["results"]] == [f"img{i}.jpg" for i in range(5)]
    balance, total, _ = _ledger(api, key_id)
    assert balance == 0 and total == 0


def test_one_bad_image_fails_only_itself_and_is_not_charged(api):
    key_id, secret = api.create_key(10)
    import requests

    form = [
        ("files", ("good.jpg", image_bytes(320, 240, seed=300), "image/jpeg")),
        ("files", ("bad.jpg", b"definitely not a jpeg", "image/jpeg")),
        ("files", ("good2.png", image_bytes(320, 240, fmt="PNG", seed=301), "image/png")),
    ]
    r = requests.post(
        f"{api.url}{SEG}/batch?points={quote(json.dumps([[100, 100]]))}",
        files=form,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=300,
    )
    body = r.json()
    assert [x["status"] for x in body["results"]] == ["completed", "failed", "completed"]
    assert "not a JPEG, PNG or WebP" in body["results"][1]["error"]
    assert body["total_credits_used"] == 2
    balance, total, _ = _ledger(api, key_id)
    assert balance == 8 and total == 8


def test_batch_where_every_image_fails(api):
    _, secret = api.create_key(0)
    import requests

    form = [("files", (f"x{i}.jpg", image_bytes(seed=400 + i), "image/jpeg")) for i in range(2)]
    r = requests.post(
        f"{api.url}{SEG}/batch?points={quote(json.dumps([[10, 10]]))}",
        files=form,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "failed" and body["failed"] == 2 and body["error"]
