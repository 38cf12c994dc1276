"""Image handles (API.md v1.2) through the handlers, over the fake model tier: upload once, then clicks only."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import aiohttp
import numpy as np
from PIL import Image

from maskserve.devtools.pictures import image_bytes, png_mask
from tests.plugins.calls import EXT, POINT, SEG, auth, form

HANDLE = re.compile(r"^img_[0-9a-f]{32}$")
OTHER_POINT = quote(json.dumps([[100, 100]]))


async def _mask(client, body: dict) -> np.ndarray:
    url = body["result"]["output_url"]
    data = await (await client.get(url[url.index("/v1/") :])).read()
    return np.asarray(Image.open(io.BytesIO(data)))


async def _by_handle(client, secret: str, image_id: str, point: str = POINT, data=None, path: str = SEG):
    return await client.post(f"{path}?points={point}&image_id={image_id}", data=data, headers=auth(secret))


async def test_an_upload_gets_a_handle_and_clicks_by_handle_answer_alike(client, new_key, fake):
    _, secret = await new_key(10)
    photo = image_bytes(seed=200)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=auth(secret))
    assert r.status == 200, await r.text()
    uploaded = await r.json()
    image_id = uploaded["result"]["image_id"]
    assert HANDLE.match(image_id)
    again = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=auth(secret))
    assert (await again.json())["result"]["image_id"] == image_id  # same key, same content: same handle
    encodes = fake.encodes
    for body in (None, aiohttp.FormData(), form("other", image_bytes(seed=1))):  # no body, no parts, no image
        r = await _by_handle(client, secret, image_id, data=body)
        assert r.status == 200, await r.text()
        by_handle = await r.json()
        result = by_handle["result"]
        assert result["image_id"] == image_id and result["credits_used"] == 1
        assert result["input_filename"] == uploaded["result"]["input_filename"]
        assert (result["original_width"], result["original_height"]) == (640, 480)
        assert np.array_equal(await _mask(client, by_handle), await _mask(client, uploaded))
        assert "decode" not in r.headers["Server-Timing"] and "embeddings;desc=cached" in r.headers["Server-Timing"]
        assert r.headers["X-Credits-Charged"] == "1"
    assert fake.encodes == encodes  # the model tier held the image: nothing was sent again


async def test_a_handle_belongs_to_its_key_and_bad_ones_are_refused(client, new_key):
    _, secret = await new_key(10)
    _, other = await new_key(10)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=201)), headers=auth(secret))
    image_id = (await r.json())["result"]["image_id"]
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=201)), headers=auth(other))
    assert (await r.json())["result"]["image_id"] != image_id  # the same image is another key's own handle
    for key, handle in ((other, image_id), (secret, "img_" + "0" * 32)):
        r = await _by_handle(client, key, handle)
        assert r.status == 404 and (await r.json()) == {"detail": "Unknown or expired image_id"}
    r = await _by_handle(client, secret, "img_XYZ")
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "image_id"]
    r = await _by_handle(client, secret, image_id, data=form("file", image_bytes(seed=201)))
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "image_id"]
    r = await client.post(f"{SEG}/batch?points={POINT}&image_id={image_id}", data=form("files"), headers=auth(secret))
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "image_id"]
    r = await client.post(f"{SEG}?points={POINT}", headers=auth(secret))
    assert r.status == 400  # neither an image nor a handle
    balance = await (await client.get("/v1/account", headers=auth(secret))).json()
    assert balance["credits"] == 9  # only the upload was charged


async def test_an_evicted_image_is_encoded_again_from_the_kept_upload(client, new_key, fake):
    _, secret = await new_key(10)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=202)), headers=auth(secret))
    first = await r.json()
    fake.seen.clear()  # the model tier lost the image (an eviction, a restart, a replica)
    encodes = fake.encodes
    r = await _by_handle(client, secret, first["result"]["image_id"])
    assert r.status == 200, await r.text()
    assert fake.encodes == encodes + 1  # the fake checks that the bytes sent are the upload its digest names
    assert "encode" in r.headers["Server-Timing"]
    assert np.array_equal(await _mask(client, await r.json()), await _mask(client, first))


async def test_forgetting_and_expiry(make_client):
    client = await make_client(image_id_ttl_s=1.0, sweep_interval_s=0.2)
    _, secret = await _key(client)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=203)), headers=auth(secret))
    image_id = (await r.json())["result"]["image_id"]
    for _ in range(3):  # each use renews it: it outlives its ttl while it is used
        await asyncio.sleep(0.6)
        assert (await _by_handle(client, secret, image_id)).status == 200
    from maskserve.frontend.http.state import STORE

    kept = await client.app[STORE].get_image(image_id)
    assert kept is not None and Path(kept.location).is_file()
    await asyncio.sleep(1.4)
    assert (await _by_handle(client, secret, image_id)).status == 404
    assert await client.app[STORE].get_image(image_id) is None and not Path(kept.location).exists()  # swept
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=204)), headers=auth(secret))
    image_id = (await r.json())["result"]["image_id"]
    assert (await client.delete(f"/v1/images/{image_id}", headers=auth(secret))).status == 204
    assert (await _by_handle(client, secret, image_id)).status == 404
    assert (await client.delete(f"/v1/images/{image_id}", headers=auth(secret))).status == 404


async def _key(client) -> tuple[str, str]:
    from maskserve.frontend.http.state import STORE

    key, secret = await client.app[STORE].create_key("handles", 10)
    return key.id, secret


async def test_extraction_everything_and_refinement_by_handle(client, new_key):
    _, secret = await new_key(20)
    photo = image_bytes(seed=205)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", photo), headers=auth(secret))
    first = await r.json()
    image_id = first["result"]["image_id"]
    r = await client.post(f"{EXT}?points={POINT}&image_id={image_id}&output_format=png", headers=auth(secret))
    assert r.status == 200, await r.text()
    cut = await r.json()
    assert cut["result"]["image_id"] == image_id and cut["result"]["credits_used"] == 2
    assert "decode" in r.headers["Server-Timing"]  # a cut-out needs the pixels: the kept upload is read
    mask = aiohttp.FormData()
    mask.add_field("mask", png_mask(640, 480, (10, 10, 100, 100)), filename="m.png", content_type="image/png")
    r = await client.post(f"{EXT}?image_id={image_id}", data=mask, headers=auth(secret))
    assert r.status == 200 and (await r.json())["result"]["image_id"] == image_id
    r = await client.post(f"/v1/services/image-segmentation/everything?image_id={image_id}", headers=auth(secret))
    assert r.status == 200 and (await r.json())["result"]["credits_used"] == 4
    refine = f"{SEG}?points={OTHER_POINT}&image_id={image_id}&previous_job_id={first['job_id']}"
    r = await client.post(refine, headers=auth(secret))
    assert r.status == 200, await r.text()
    other = image_bytes(seed=206)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", other), headers=auth(secret))
    other_id = (await r.json())["result"]["image_id"]
    r = await client.post(
        f"{SEG}?points={POINT}&image_id={other_id}&previous_job_id={first['job_id']}", headers=auth(secret)
    )
    assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["query", "previous_job_id"]


async def test_batch_items_get_their_handles(client, new_key):
    _, secret = await new_key(10)
    images = [image_bytes(seed=207), image_bytes(seed=208)]
    r = await client.post(f"{SEG}/batch?points={POINT}", data=form("files", *images), headers=auth(secret))
    ids = [item["image_id"] for item in (await r.json())["results"]]
    assert len(set(ids)) == 2 and all(HANDLE.match(i) for i in ids)
    assert (await _by_handle(client, secret, ids[1])).status == 200


async def test_an_async_request_by_handle(client, new_key):
    _, secret = await new_key(10)
    r = await client.post(f"{SEG}?points={POINT}", data=form("file", image_bytes(seed=209)), headers=auth(secret))
    image_id = (await r.json())["result"]["image_id"]
    r = await client.post(f"{SEG}?points={POINT}&image_id={image_id}&async=true", headers=auth(secret))
    assert r.status == 202
    job_id = (await r.json())["job_id"]
    for _ in range(100):
        job = await (await client.get(f"/v1/jobs/{job_id}", headers=auth(secret))).json()
        if job["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "completed" and job["image_id"] == image_id
