"""Handlers through aiohttp's test client: the real app, a real SQLite store, a fake Triton."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from PIL import Image

from maskserve.devtools.pictures import image_bytes, png_mask
from maskserve.frontend.http.middleware import PUBLIC_ROUTES
from maskserve.frontend.http.state import STORE
from tests.plugins.calls import EXT, POINT, SEG, auth, form


async def test_every_route_needs_a_key_unless_it_is_public(client):
    """Walks the route table: authentication fails closed for every route not listed as public."""
    routes = [r for r in client.app.router.routes() if r.method != "HEAD"]
    assert routes and all(r.resource is not None and r.resource.name for r in routes), "every route has a name"
    private = 0
    for route in routes:
        info = route.resource.get_info()
        path = info.get("path") or (
            info["formatter"]
            .replace("{job_id}", "0" * 32)
            .replace("{batch_id}", "0" * 32)
            .replace("{image_id}", "img_" + "0" * 32)
            .replace("{video_id}", "vid_" + "0" * 32)
            .replace("{name}", "playground.js")
        )
        response = await client.request(route.method, path)
        if route.resource.name in PUBLIC_ROUTES:
            assert response.status != 401, path
        else:
            private += 1
            assert response.status == 401, (route.method, path, response.status)
            assert await response.json() == {"detail": "Invalid or missing API key"}
    assert private >= 6
    assert {"healthz", "readyz", "openapi", "metrics", "file", "playground", "playground_asset"} == PUBLIC_ROUTES


async def test_a_route_added_later_is_private_by_default(client):
    async def secret_handler(request):
        return aiohttp.web.json_response({"leak": True})

    app = client.app
    app.router._frozen = False  # the test adds a route after start-up, as a careless change would
    app.router.add_get("/v1/new-thing", secret_handler, name="new_thing")
    assert (await client.get("/v1/new-thing")).status == 401


async def test_unknown_paths_are_404_not_401(client):
    assert (await client.get("/v1/nothing-here")).status == 404


async def test_segmentation_is_charged_once_and_its_mask_is_served(client, new_key, fake):
    key_id, secret = await new_key(3)
    response = await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(secret))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "completed" and body["result"]["credits_used"] == 1
    assert response.headers["X-RateLimit-Limit"] == "60"
    url = body["result"]["output_url"]
    mask = await client.get(url[url.index("/v1/files/") :])
    assert mask.status == 200 and mask.headers["Content-Type"] == "image/png"
    import io

    pixels = np.asarray(Image.open(io.BytesIO(await mask.read())))
    assert pixels.shape == (480, 640) and pixels[240, 320] == 255 and pixels[10, 10] == 0
    store = client.app[STORE]
    assert (await store.get_key(key_id)).credits == 2 == await store.ledger_sum(key_id)
    # the second prompt on the same image reuses the embeddings the model tier holds
    await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(secret))
    assert fake.encodes == 1 and fake.decodes == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'maskserve_model_tier_encodes_total{encoded="no"} 1.0' in metrics


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("points=[[1,2]", ["query", "points"]),
        ("points=[[1,2]]&labels=[2]", ["query", "labels"]),
        ("box=[10,10,5,5]", ["query", "box"]),
        ("points=[[1,2]]&feather=3", ["query", "feather"]),
        ("points=[[9999,2]]", ["query", "points"]),
    ],
)
async def test_422_names_the_parameter(client, new_key, query, loc):
    _, secret = await new_key()
    response = await client.post(f"{SEG}?{query}", data=form(), headers=auth(secret))
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == loc


async def test_400_402_and_nothing_charged(client, new_key):
    key_id, secret = await new_key(0)
    assert (await client.post(f"{SEG}?points={POINT}", data=form("other"), headers=auth(secret))).status == 400
    assert (await client.post(SEG, data=form(), headers=auth(secret))).status == 400
    response = await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(secret))
    assert response.status == 402 and await response.json() == {"detail": "Insufficient credits"}
    assert await client.app[STORE].ledger_sum(key_id) == 0


async def test_503_when_the_model_tier_is_away_and_nothing_is_charged(client, new_key, fake):
    key_id, secret = await new_key(5)
    fake.down = True
    response = await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(secret))
    assert response.status == 503
    assert (await client.app[STORE].get_key(key_id)).credits == 5
    assert (await client.get("/readyz")).status == 503


async def test_429_with_retry_after(make_client, tmp_path):
    client = await make_client(rate_single_per_min=2)
    _, secret = await client.app[STORE].create_key("r", 10)
    statuses = [(await client.post(SEG, data=form(), headers=auth(secret))).status for _ in range(3)]
    assert statuses == [400, 400, 429]
    limited = await client.post(SEG, data=form(), headers=auth(secret))
    assert limited.headers["Retry-After"] and limited.headers["X-RateLimit-Remaining"] == "0"
    # the IETF draft's headers say the same (API.md v1.2, "Standard headers")
    assert limited.headers["RateLimit-Policy"] == '"single";q=2;w=60'
    assert limited.headers["RateLimit"] == f'"single";r=0;t={limited.headers["X-RateLimit-Reset"]}'


async def test_an_image_the_model_tier_cannot_read_is_422_and_refunded(client, new_key, fake):
    key_id, secret = await new_key(3)
    fake.reject = "image is truncated or corrupt: broken data stream"
    response = await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(secret))
    assert response.status == 422
    assert (await response.json())["detail"][0] == {
        "loc": ["body", "file"],
        "msg": "image is truncated or corrupt: broken data stream",
        "type": "value_error",
    }
    assert (await client.app[STORE].get_key(key_id)).credits == 3 == await client.app[STORE].ledger_sum(key_id)


async def test_extraction_with_an_uploaded_mask_needs_no_model(client, new_key, fake):
    key_id, secret = await new_key(2)
    data = aiohttp.FormData()
    data.add_field("image", image_bytes(), filename="a.jpg", content_type="image/jpeg")
    data.add_field("mask", png_mask(640, 480, (100, 100, 300, 300)), filename="m.png", content_type="image/png")
    response = await client.post(f"{EXT}?output_format=png", data=data, headers=auth(secret))
    assert response.status == 200, await response.text()
    assert fake.encodes == 0 and (await client.app[STORE].get_key(key_id)).credits == 0


async def test_batch_with_one_bad_image_fails_only_that_one(client, new_key):
    key_id, secret = await new_key(5)
    data = form("files", image_bytes(seed=1), b"not an image", image_bytes(seed=2))
    response = await client.post(f"{SEG}/batch?points={POINT}", data=data, headers=auth(secret))
    body = await response.json()
    assert response.status == 200 and [r["status"] for r in body["results"]] == ["completed", "failed", "completed"]
    assert body["total_credits_used"] == 2 and (await client.app[STORE].get_key(key_id)).credits == 3


async def test_jobs_and_account_belong_to_their_key(client, new_key):
    _, first = await new_key(3)
    _, second = await new_key(3)
    job_id = (await (await client.post(f"{SEG}?points={POINT}", data=form(), headers=auth(first))).json())["job_id"]
    assert (await client.get(f"/v1/jobs/{job_id}", headers=auth(first))).status == 200
    assert (await client.get(f"/v1/jobs/{job_id}", headers=auth(second))).status == 404
    account = await (await client.get("/v1/account", headers=auth(first))).json()
    assert account["credits"] == 2 and account["key_prefix"].startswith("sk-live-")


async def test_health_readiness_and_openapi(client):
    assert (await client.get("/healthz")).status == 200
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["random_weights"] is True
    spec = await (await client.get("/openapi.json")).json()
    assert SEG in spec["paths"]


async def test_the_playground_is_public_self_contained_and_under_a_strict_policy(client):
    page = await client.get("/playground")
    assert page.status == 200 and page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    html = await page.text()
    assert "<script>" not in html and " style=" not in html  # nothing inline for the policy to refuse
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = await client.get(f"/playground/{name}")
        assert asset.status == 200 and asset.content_type == kind and asset.headers["Content-Security-Policy"] == csp
        text = await asset.text()
        assert "http://" not in text and "https://" not in text  # nothing from a CDN or anywhere else
        assert "localStorage" not in text and "document.cookie" not in text  # the key stays in sessionStorage
    for name in ("secret.txt", "..%2F..%2Fconfig.py", "index.htm"):
        missing = await client.get(f"/playground/{name}")
        assert missing.status == 404 and (await missing.json())["detail"]


def test_the_playground_policy_allows_the_object_store_only_when_links_redirect_there():
    from maskserve.frontend.config import Settings
    from maskserve.frontend.http.playground import content_security_policy

    s3 = {"files_backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://minio:9000"}
    assert "minio" not in content_security_policy(Settings())
    redirect = content_security_policy(Settings(**s3, s3_public_endpoint_url="https://files.example.com/x"))
    assert "connect-src 'self' https://files.example.com;" in redirect and "minio" not in redirect
    assert "connect-src 'self' http://minio:9000;" in content_security_policy(Settings(**s3))
    assert "minio" not in content_security_policy(Settings(**s3, s3_downloads="proxy"))
    aws = content_security_policy(Settings(files_backend="s3", s3_bucket="b"))
    assert "img-src 'self' blob: data: https://*.amazonaws.com;" in aws


async def _until_async_ended(client, batch_id: str, secret: str) -> dict:
    """Poll an async batch until it ended and its request's task has ended too; → its last body."""
    from maskserve.frontend.http.state import SERVICES

    later = client.app[SERVICES].later
    for _ in range(200):
        await asyncio.sleep(0.05)
        body = await (await client.get(f"/v1/batches/{batch_id}", headers=auth(secret))).json()
        if body["status"] != "processing" and later.waiting == 0:
            break
    return body


async def test_the_async_backlog_is_bounded_with_a_fast_503(make_client, fake):
    client = await make_client(async_backlog_images=2)
    store = client.app[STORE]
    key, secret = await store.create_key("backlog", 10)
    fake.delay_s = 0.5
    first = await client.post(
        f"{SEG}/batch?points={POINT}&async=true",
        data=form("files", image_bytes(seed=801), image_bytes(seed=802)),
        headers=auth(secret),
    )
    assert first.status == 202
    refused = await client.post(
        f"{SEG}?points={POINT}&async=true", data=form("file", image_bytes(seed=803)), headers=auth(secret)
    )
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert "asynchronous images are waiting" in (await refused.json())["detail"]
    assert (await store.get_key(key.id)).credits == 8  # the batch's two reserved, the refused one nothing
    await _until_async_ended(client, (await first.json())["batch_id"], secret)
    later = await client.post(
        f"{SEG}?points={POINT}&async=true", data=form("file", image_bytes(seed=803)), headers=auth(secret)
    )
    assert later.status == 202


async def test_waiting_async_images_beyond_the_inflight_bound_wait_as_their_kept_inputs(make_client, fake):
    """At most ``inflight_images`` async images are held prepared in memory; the rest are prepared again from
    their kept inputs when their turn comes, and all complete, each charged once."""
    from maskserve.frontend.http.state import SERVICES

    client = await make_client(inflight_images=2)
    store = client.app[STORE]
    key, secret = await store.create_key("held", 10)
    fake.delay_s = 0.1
    r = await client.post(
        f"{SEG}/batch?points={POINT}&async=true",
        data=form("files", *(image_bytes(seed=820 + i) for i in range(5))),
        headers=auth(secret),
    )
    assert r.status == 202
    body = await _until_async_ended(client, (await r.json())["batch_id"], secret)
    later = client.app[SERVICES].later
    assert body["completed"] == 5, body
    assert later.held_peak == 2 and later.held == 0 and later.waiting == 0
    assert (await store.get_key(key.id)).credits == 5
