"""Cost and timing headers, and extraction styling's parameters, through the handlers over the fake model tier."""

from __future__ import annotations

import re

import aiohttp

from tests.helpers import image_bytes, png_mask
from tests.unit.test_http import EXT, POINT, SEG, auth, form

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
