"""Objects, inline masks, refinement and segment-everything through the handlers, over the fake model tier."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import numpy as np
import pytest

from maskserve.core import encodings, everything
from maskserve.devtools.pictures import image_bytes
from maskserve.frontend.http.state import STORE
from tests.plugins.calls import SEG, auth, form

EVERYTHING = f"{SEG}/everything"


def q(value) -> str:
    return quote(json.dumps(value))


async def balance(client, secret: str) -> int:
    return (await (await client.get("/v1/account", headers=auth(secret))).json())["credits"]


async def test_objects_decode_together_and_cost_one_credit(client, new_key, fake):
    _, secret = await new_key(10)
    objects = [{"points": [[100, 100]]}, {"box": [300, 200, 500, 400]}, {"points": [[600, 50]], "labels": [1]}]
    r = await client.post(f"{SEG}?objects={q(objects)}&mask_format=polygons", data=form(), headers=auth(secret))
    assert r.status == 200, await r.text()
    result = (await r.json())["result"]
    assert len(fake.prompts[-1]) == 3 and result["credits_used"] == 1 and await balance(client, secret) == 9
    assert [o["index"] for o in result["objects"]] == [0, 1, 2]
    assert all(o["output_url"].split("?")[0].endswith(f"{result['job_id']}_{o['index']}") for o in result["objects"])
    assert result["area"] <= sum(o["area"] for o in result["objects"]) and result["mask"]["format"] == "polygons"
    job = await (await client.get(f"/v1/jobs/{result['job_id']}", headers=auth(secret))).json()
    assert job["objects"][1]["bbox"] == result["objects"][1]["bbox"]  # the stored shape comes back


async def test_object_links_serve_their_own_masks_and_the_logits_never(client, new_key):
    _, secret = await new_key(10)
    objects = [{"points": [[100, 100]]}, {"points": [[500, 300]]}]
    result = (await (await client.post(f"{SEG}?objects={q(objects)}", data=form(), headers=auth(secret))).json())[
        "result"
    ]
    first = await client.get(result["objects"][0]["output_url"].split(str(client.server.port))[1])
    assert first.status == 200 and first.headers["Content-Type"] == "image/png"
    job = result["job_id"]
    query = result["output_url"].split("?")[1]
    assert (await client.get(f"/v1/files/{job}_logits?{query}")).status == 403  # signed for another file
    assert (await client.get(f"/v1/files/{job}_0?{query}")).status == 403


async def test_refinement_sends_the_earlier_logits_back(client, new_key, fake):
    _, secret = await new_key(10)
    photo = image_bytes(seed=5)
    first = await (
        await client.post(f"{SEG}?points={q([[100, 100]])}", data=form("file", photo), headers=auth(secret))
    ).json()
    r = await client.post(
        f"{SEG}?points={q([[400, 300]])}&previous_job_id={first['job_id']}",
        data=form("file", photo),
        headers=auth(secret),
    )
    assert r.status == 200, await r.text()
    sent = fake.prompts[-1][0].mask_input
    assert sent is not None and sent.shape == (1, 256, 256) and sent.max() == 10.0
    _, other = await new_key(10)
    r = await client.post(
        f"{SEG}?points={q([[1, 1]])}&previous_job_id={first['job_id']}", data=form("file", photo), headers=auth(other)
    )
    assert r.status == 404 and await balance(client, other) == 10
    r = await client.post(
        f"{SEG}?points={q([[1, 1]])}&previous_job_id={first['job_id']}",
        data=form("file", image_bytes(seed=6)),
        headers=auth(secret),
    )
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "previous_job_id"]
    r = await client.post(
        f"{SEG}/batch?points={q([[1, 1]])}&previous_job_id={first['job_id']}", data=form("files"), headers=auth(secret)
    )
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "previous_job_id"]


async def test_everything_orders_by_area_and_paints_smaller_masks_on_top(client, new_key):
    _, secret = await new_key(10)
    r = await client.post(f"{EVERYTHING}?points_per_side=4&mask_format=rle", data=form(), headers=auth(secret))
    assert r.status == 200, await r.text()
    result = (await r.json())["result"]
    assert result["credits_used"] == 4 and await balance(client, secret) == 6
    areas = [m["area"] for m in result["masks"]]
    assert areas == [1600, 100, 64]
    first = encodings.rle_decode(result["masks"][0]["mask"])
    assert first[:40, :40].all() and result["masks"][0]["bbox"] == [0, 0, 40, 40]
    assert result["masks"][0]["point"] == pytest.approx(list(everything.point_grid(4)[0] * [640, 480]))
    limited = await client.post(f"{EVERYTHING}?max_masks=1", data=form(), headers=auth(secret))
    assert [m["area"] for m in (await limited.json())["result"]["masks"]] == [1600]  # the best score kept


async def test_a_grid_too_large_for_the_budget_is_refused_uncharged_with_the_grid_that_fits(make_client, fake):
    client = await make_client(everything_budget_s=30.0)
    _, secret = await client.app[STORE].create_key("unit", 10)
    fake.per_point_s = 0.025  # 2 CPU cores: 40 points per second
    r = await client.post(f"{EVERYTHING}?points_per_side=63", data=form(), headers=auth(secret))
    assert r.status == 422, await r.text()
    (error,) = (await r.json())["detail"]
    assert error["loc"] == ["query", "points_per_side"]
    assert "about 100 s" in error["msg"] and "30 s limit" in error["msg"]
    assert "points_per_side=34 or fewer fits" in error["msg"]  # (30 - 0.5) / 0.025 = 1180 points
    assert await balance(client, secret) == 10
    ok = await client.post(f"{EVERYTHING}?points_per_side=34", data=form(), headers=auth(secret))
    assert ok.status == 200 and await balance(client, secret) == 6
    fake.per_point_s = 2.0  # not even the smallest grid (16 points) fits at this speed
    r = await client.post(f"{EVERYTHING}?points_per_side=4", data=form(), headers=auth(secret))
    assert r.status == 422 and "no grid fits" in (await r.json())["detail"][0]["msg"]
    assert await balance(client, secret) == 6


async def test_credits_stay_exact_under_concurrent_new_requests(client, new_key):
    key_id, secret = await new_key(23)
    objects = q([{"points": [[10, 10]]}, {"points": [[50, 50]]}])

    async def one(i: int) -> int:
        path = [f"{SEG}?objects={objects}", EVERYTHING, f"{SEG}?points={q([[5, 5]])}&mask_format=rle"][i % 3]
        return (await client.post(path, data=form("file", image_bytes(seed=100 + i)), headers=auth(secret))).status

    statuses = await asyncio.gather(*(one(i) for i in range(15)))
    spent = sum({0: 1, 1: 4, 2: 1}[i % 3] for i, s in enumerate(statuses) if s == 200)
    assert set(statuses) <= {200, 402} and 402 in statuses
    assert await balance(client, secret) == 23 - spent
    assert await client.app[STORE].ledger_sum(key_id) == 23 - spent


@pytest.mark.parametrize(
    ("query", "name"),
    [
        (f"objects={q([{'points': [[1, 1]]}] * 17)}", "objects"),
        (f"objects={q([{'points': [[1, 1]]}])}&points={q([[1, 1]])}", "objects"),
        ("objects=%5B%7B%7D%5D", "objects"),
        ("objects=" + "%5B" * 2000, "objects"),
        (f"points={q([[1, 1]])}&mask_format=svg", "mask_format"),
        (f"points={q([[1, 1]])}&mask_format=rle&mask_format=png", "mask_format"),
        (f"points={q([[1, 1]])}&previous_job_id=" + "a" * 65, "previous_job_id"),
        (f"objects={q([{'points': [[1, 1]]}])}&previous_job_id=" + "a" * 32, "previous_job_id"),
    ],
)
async def test_hostile_values_of_the_new_parameters_get_422(client, new_key, query, name):
    _, secret = await new_key(10)
    r = await client.post(f"{SEG}?{query}", data=form(), headers=auth(secret))
    assert r.status == 422, await r.text()
    assert (await r.json())["detail"][0]["loc"] == ["query", name]
    assert await balance(client, secret) == 10


def test_polygons_keep_holes_apart():
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True
    mask[25:35, 25:35] = False
    found = encodings.polygons(mask)
    assert len(found["polygons"]) == 1 and len(found["holes"]) == 1
    assert encodings.bbox(mask) == [10, 10, 40, 40] and encodings.area(mask) == 1500


def test_box_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float64)
    assert everything.box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.7) == [1, 2]
