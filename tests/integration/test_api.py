"""The public REST contract (API.md) against the real frontend, Triton and SQLite."""

from __future__ import annotations

import io
import json
import time
from urllib.parse import quote

import jsonschema
import numpy as np
import pytest
import requests
from PIL import Image

from maskserve.core import signatures as sig
from maskserve.devtools.pictures import image_bytes, png_mask
from maskserve.frontend.signing import UrlSigner, load_or_create_secret
from tests.plugins.calls import EXT, SEG, auth, fetch, post, q, schema
from tests.plugins.stack import encoder_runs, start_api

# --- happy paths: every field of both response shapes ----------------------------------


def test_segmentation_response_and_mask(api, key):
    photo = image_bytes(640, 480, seed=1)
    r = post(api, SEG, key, {"file": ("photo.jpg", photo, "image/jpeg")}, points=[[320, 240]])
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, schema(api, "Single"))
    result = body["result"]
    assert body["job_id"] == result["job_id"] and body["status"] == result["status"] == "completed"
    assert body["error"] is None and result["error"] is None
    assert result["input_filename"] == "photo.jpg" and result["credits_used"] == 1
    assert (result["original_width"], result["original_height"]) == (640, 480)
    assert (result["output_width"], result["output_height"]) == (640, 480)
    assert result["processing_time_ms"] > 0
    assert result["output_url"].startswith(f"{api.url}/v1/files/{result['job_id']}?expires=")
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert header in r.headers
    image = fetch(result["output_url"])
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(image.content))
    assert mask.mode == "L" and mask.size == (640, 480)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_batch_response_shape(api, key):
    files = [("files", (f"p{i}.jpg", image_bytes(320, 240, seed=10 + i), "image/jpeg")) for i in range(2)]
    r = post(api, SEG + "/batch", key, files, box=[10, 10, 200, 200])
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, schema(api, "Batch"))
    assert body["status"] == "completed" and body["total_files"] == 2
    assert body["completed"] == 2 and body["failed"] == 0 and body["error"] is None
    assert body["total_credits_used"] == 2 and body["total_processing_time_ms"] > 0
    assert [x["input_filename"] for x in body["results"]] == ["p0.jpg", "p1.jpg"]


def test_jobs_and_account(api):
    _key_id, secret = api.create_key(5, name="acct")
    other = api.create_key(5)[1]
    r = post(
        api, SEG, secret, {"file": ("a.png", image_bytes(200, 100, fmt="PNG", seed=3), "image/png")}, points=[[50, 50]]
    )
    job_id = r.json()["job_id"]
    job = requests.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(secret), timeout=10)
    assert job.status_code == 200 and job.json()["job_id"] == job_id and job.json()["status"] == "completed"
    jsonschema.validate(job.json(), schema(api, "Result"))
    assert requests.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(other), timeout=10).status_code == 404
    assert requests.get(f"{api.url}/v1/jobs/{'0' * 32}", headers=auth(secret), timeout=10).status_code == 404
    account = requests.get(f"{api.url}/v1/account", headers=auth(secret), timeout=10).json()
    assert account == {"name": "acct", "key_prefix": secret[:16], "credits": 4}


# --- the four request examples of the contract, with curl ------------------------------


# --- errors: every row of the table --------------------------------------------------


def test_401_missing_malformed_unknown_revoked(api):
    key_id, secret = api.create_key(5)
    files = {"file": ("a.jpg", image_bytes(), "image/jpeg")}
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer sk-live-" + "x" * 43},
    ):
        r = requests.post(f"{api.url}{SEG}?points={q([[1, 1]])}", files=files, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json() == {"detail": "Invalid or missing API key"}
    api.call(api.store().revoke_key(key_id))
    r = post(api, SEG, secret, files, points=[[1, 1]])
    assert r.status_code == 401 and r.json() == {"detail": "Invalid or missing API key"}


def test_400_rows(api, key):
    img = ("a.jpg", image_bytes(), "image/jpeg")
    cases = [
        (SEG, {"other": img}, {"points": [[1, 1]]}, "No file"),
        (SEG, {"file": img}, {}, "points"),
        (EXT, {"image": img}, {}, "mask"),
        (
            EXT + "/batch",
            [("images", img), ("images", img), ("masks", ("m.png", png_mask(640, 480, (0, 0, 9, 9)), "image/png"))],
            {},
            "masks",
        ),
        (SEG + "/batch", [("files", img)] * 51, {"points": [[1, 1]]}, "50"),
        (SEG + "/batch", {"nothing": img}, {"points": [[1, 1]]}, "No file"),
    ]
    for path, files, params, words in cases:
        r = post(api, path, key, files, **params)
        assert r.status_code == 400, (path, r.text)
        assert isinstance(r.json()["detail"], str) and words in r.json()["detail"]


def test_402_when_balance_cannot_pay(api):
    key_id, secret = api.create_key(1)
    r = post(api, EXT, secret, {"image": ("a.jpg", image_bytes(), "image/jpeg")}, box=[1, 1, 100, 100])
    assert r.status_code == 402 and r.json() == {"detail": "Insufficient credits"}
    assert api.call(api.store().get_key(key_id)).credits == 1


def test_413_file_over_25_mb_without_buffering_it(api, key):
    big = b"\xff\xd8" + b"\0" * (26 * 1024 * 1024)
    started = time.monotonic()
    r = post(api, SEG, key, {"file": ("big.jpg", big, "image/jpeg")}, points=[[1, 1]])
    assert r.status_code == 413 and "25 MB" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for _ in range(27):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--b0undary--\r\n"

    r = requests.post(
        f"{api.url}{SEG}?points={q([[1, 1]])}",
        data=chunks(),
        timeout=60,
        headers={**auth(key), "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert r.status_code == 413
    assert time.monotonic() - started < 60


def test_413_image_over_the_pixel_limit(api, key):
    # a small file that declares 20000 x 20000 pixels
    r = post(api, SEG, key, {"file": ("huge.png", _bomb_png(20000, 20000), "image/png")}, points=[[1, 1]])
    assert r.status_code == 413 and "pixel" in r.json()["detail"]


def _bomb_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "params,loc",
    [
        ({"points": "[[1,2]"}, ["query", "points"]),
        ({"points": '{"x": 1}'}, ["query", "points"]),
        ({"points": [[1, 2, 3]]}, ["query", "points"]),
        ({"points": [["a", 2]]}, ["query", "points"]),
        ({"points": [[1, 2]], "labels": [1, 0]}, ["query", "labels"]),
        ({"points": [[1, 2]], "labels": [2]}, ["query", "labels"]),
        ({"points": [[5000, 2]]}, ["query", "points"]),
        ({"points": [[-1, 2]]}, ["query", "points"]),
        ({"box": [100, 100, 50, 200]}, ["query", "box"]),
        ({"box": [1, 2, 3]}, ["query", "box"]),
        ({"box": [0, 0, 100, 5000]}, ["query", "box"]),
        ({"points": "[[NaN, 1]]"}, ["query", "points"]),
        ({"points": [[float(i), 1.0] for i in range(17)]}, ["query", "points"]),
    ],
)
def test_422_bad_prompts(api, key, params, loc):
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    r = post(api, SEG, key, {"file": ("a.jpg", image_bytes(640, 480), "image/jpeg")}, **params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert (
        isinstance(detail, list) and detail[0]["loc"] == loc and detail[0]["type"] == "value_error" and detail[0]["msg"]
    )


@pytest.mark.parametrize(
    "params,loc",
    [
        ({"feather": "51"}, "feather"),
        ({"feather": "-1"}, "feather"),
        ({"feather": "soft"}, "feather"),
        ({"output_format": "jpeg"}, "output_format"),
    ],
)
def test_422_bad_extraction_options(api, key, params, loc):
    r = post(api, EXT, key, {"image": ("a.jpg", image_bytes(), "image/jpeg")}, box=[1, 1, 100, 100], **params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", loc]


def test_422_unreadable_or_unsupported_image_and_mask_mismatch(api, key):
    for data in (b"hello world", image_bytes()[:300], b"GIF89a" + b"\0" * 64):
        r = post(api, SEG, key, {"file": ("x.jpg", data, "image/jpeg")}, points=[[1, 1]])
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"], r.text
    r = post(
        api,
        EXT,
        key,
        {
            "image": ("a.jpg", image_bytes(640, 480), "image/jpeg"),
            "mask": ("m.png", png_mask(320, 240, (0, 0, 10, 10)), "image/png"),
        },
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mask"]
    assert "match" in r.json()["detail"][0]["msg"]


def test_429_with_retry_after(api):
    _, secret = api.create_key(0)
    codes = []
    for _ in range(31):
        r = requests.post(
            f"{api.url}{SEG}/batch?points={q([[1, 1]])}", files={"x": ("a", b"a")}, headers=auth(secret), timeout=10
        )
        codes.append(r.status_code)
    assert codes[:30] == [400] * 30 and codes[30] == 429
    assert r.json() == {"detail": "Rate limit exceeded"}
    assert 1 <= int(r.headers["Retry-After"]) <= 60 and r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit-Policy"] == '"batch";q=30;w=60'
    assert r.headers["RateLimit"] == f'"batch";r=0;t={r.headers["X-RateLimit-Reset"]}'
    # the single-image bucket is separate
    r = requests.post(
        f"{api.url}{SEG}?points={q([[1, 1]])}", files={"x": ("a", b"a")}, headers=auth(secret), timeout=10
    )
    assert r.status_code == 400 and r.headers["X-RateLimit-Limit"] == "60"
    assert r.headers["RateLimit-Policy"] == '"single";q=60;w=60' and r.headers["RateLimit"].startswith('"single";r=59;')


def test_503_when_triton_is_unreachable_and_nothing_is_charged(tmp_path_factory):
    from maskserve.triton.server import free_port

    api = start_api(tmp_path_factory, f"127.0.0.1:{free_port()}", triton_timeout_s=5)
    try:
        key_id, secret = api.create_key(10)
        r = post(api, SEG, secret, {"file": ("a.jpg", image_bytes(), "image/jpeg")}, points=[[5, 5]])
        assert r.status_code == 503 and isinstance(r.json()["detail"], str)
        assert api.call(api.store().get_key(key_id)).credits == 10
        ready = requests.get(f"{api.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
    finally:
        api.stop()


# --- files ---------------------------------------------------------------------------


def test_signed_file_links(api, key):
    r = post(api, SEG, key, {"file": ("a.jpg", image_bytes(seed=8), "image/jpeg")}, points=[[10, 10]])
    url = r.json()["result"]["output_url"]
    job_id = r.json()["job_id"]
    assert fetch(url).status_code == 200
    base, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    tampered = f"{base}?expires={params['expires']}&sig={'0' * 64}"
    assert fetch(tampered).status_code == 403
    assert fetch(f"{base}?expires={int(params['expires']) + 1}&sig={params['sig']}").status_code == 403
    assert fetch(base).status_code == 403
    signer = UrlSigner(load_or_create_secret(api.settings.secret_path), 3600)
    past = int(time.time()) - 10
    expired = fetch(f"{base}?expires={past}&sig={signer.sign(job_id, past)}")
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    unknown = "f" * 32
    future = int(time.time()) + 100
    assert fetch(f"{api.url}/v1/files/{unknown}?expires={future}&sig={signer.sign(unknown, future)}").status_code == 404
    traversal = "../maskserve.db"
    assert fetch(
        f"{api.url}/v1/files/{quote(traversal, safe='')}?expires={future}&sig={signer.sign(traversal, future)}"
    ).status_code in (403, 404)


def test_expired_files_are_deleted_by_the_sweep(triton_server, tmp_path_factory):
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, url_ttl_s=1, image_id_ttl_s=1, sweep_interval_s=0.3)
    try:
        _, secret = api.create_key(10)
        r = post(
            api,
            EXT,
            secret,
            {
                "image": ("a.jpg", image_bytes(), "image/jpeg"),
                "mask": ("m.png", png_mask(640, 480, (10, 10, 100, 100)), "image/png"),
            },
        )
        assert r.status_code == 200
        files = sorted(p.name for p in api.settings.files_dir.iterdir())
        image_id = r.json()["result"]["image_id"]
        assert files == sorted([f"{r.json()['job_id']}.webp", f"{image_id}.bin"])  # the output, the kept upload
        time.sleep(2.5)
        assert not any(api.settings.files_dir.iterdir())
        assert fetch(r.json()["result"]["output_url"]).status_code == 403
    finally:
        api.stop()


# --- extraction --------------------------------------------------------------------


def _extract(api, key, mask: bytes, **params) -> np.ndarray:
    r = post(
        api,
        EXT,
        key,
        {
            "image": ("a.png", image_bytes(320, 240, fmt="PNG", seed=9), "image/png"),
            "mask": ("m.png", mask, "image/png"),
        },
        **params,
    )
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(fetch(r.json()["result"]["output_url"]).content)).convert("RGBA"))


def test_feather_softens_the_edge_only_when_asked(api, key):
    mask = png_mask(320, 240, (60, 50, 260, 190))
    hard = _extract(api, key, mask, output_format="png")[..., 3]
    assert set(np.unique(hard)) == {0, 255}
    for feather in ("3", "20"):
        soft = _extract(api, key, mask, feather=feather)[..., 3]
        partial = (soft > 0) & (soft < 255)
        assert partial.any()
    assert ((soft > 0) & (soft < 255)).sum() > (
        (_extract(api, key, mask, feather="3")[..., 3] > 0) & (_extract(api, key, mask, feather="3")[..., 3] < 255)
    ).sum()


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "RGBA", "LA", "P", "I;16"])
def test_uploaded_masks_of_any_mode(api, key, mode):
    alpha = _extract(api, key, png_mask(320, 240, (60, 50, 260, 190), mode=mode))[..., 3]
    assert alpha[100, 150] == 255 and alpha[10, 10] == 0


def test_soft_mask_is_kept_as_alpha_and_pixels_are_lossless(api, key):
    soft = png_mask(320, 240, (60, 50, 260, 190), soft=True)
    out = _extract(api, key, soft, output_format="png")
    want = np.asarray(Image.open(io.BytesIO(soft)))
    np.testing.assert_array_equal(out[..., 3], want)
    source = np.asarray(Image.open(io.BytesIO(image_bytes(320, 240, fmt="PNG", seed=9))).convert("RGB"))
    visible = want > 0
    np.testing.assert_array_equal(out[..., :3][visible], source[visible])


def test_exif_orientation_reports_the_oriented_size(api, key):
    img = Image.fromarray(np.full((200, 400, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the oriented image is 200 wide, 400 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    r = post(api, SEG, key, {"file": ("r.jpg", buf.getvalue(), "image/jpeg")}, points=[[150, 350]])
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert (result["original_width"], result["original_height"]) == (200, 400)
    assert Image.open(io.BytesIO(fetch(result["output_url"]).content)).size == (200, 400)
    r = post(api, SEG, key, {"file": ("r.jpg", buf.getvalue(), "image/jpeg")}, points=[[350, 150]])
    assert r.status_code == 422  # x = 350 is outside the oriented image


# --- embedding cache -----------------------------------------------------------------


def test_second_request_on_the_same_image_skips_the_encoder(api, key, triton_server):
    def encoder_count() -> int:
        return encoder_runs(triton_server.opts.grpc_url)

    photo = image_bytes(800, 600, seed=77)
    before = encoder_count()
    assert post(api, SEG, key, {"file": ("a.jpg", photo, "image/jpeg")}, points=[[100, 100]]).status_code == 200
    assert encoder_count() == before + 1
    for point in ([[400, 300]], [[700, 500]]):
        assert post(api, SEG, key, {"file": ("a.jpg", photo, "image/jpeg")}, points=point).status_code == 200
    r = post(api, EXT, key, {"image": ("a.jpg", photo, "image/jpeg")}, box=[10, 10, 500, 500])
    assert r.status_code == 200
    assert encoder_count() == before + 1


# --- operations ----------------------------------------------------------------------


def test_health_ready_and_openapi(api):
    assert requests.get(f"{api.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{api.url}/readyz", timeout=10)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["random_weights"] is True
    assert {m["name"] for m in body["models"]} == set(sig.LIFECYCLE_MODELS)
    assert all(
        m["weights"] == "random (seed 0)" and m["model"] == "sam2.1_hiera_tiny" and m["version"] == "1"
        for m in body["models"]
    )
    doc = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    routes = {r.resource.canonical for r in api.app.router.routes()}
    assert routes == set(doc["paths"])
    jsonschema.Draft202012Validator.check_schema(
        {**doc["components"]["schemas"]["Batch"], "components": doc["components"]}
    )


def test_metrics_move_as_requests_are_served(api, key):
    def scrape() -> str:
        return requests.get(f"{api.url}/metrics", timeout=10).text

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = scrape()
    photo = image_bytes(300, 200, seed=901)
    for point in ([[10, 10]], [[20, 20]]):
        assert post(api, SEG, key, {"file": ("a.jpg", photo, "image/jpeg")}, points=point).status_code == 200
    after = scrape()
    route = 'maskserve_http_requests_total{route="/v1/services/image-segmentation",status="200"}'
    assert value(after, route) == value(before, route) + 2
    assert value(after, "maskserve_credits_charged_total") == value(before, "maskserve_credits_charged_total") + 2
    held = 'maskserve_model_tier_encodes_total{encoded="no"}'
    assert value(after, held) == value(before, held) + 1  # the second prompt found the image in the model tier
    calls = 'maskserve_triton_call_seconds_count{model="session"}'
    assert value(after, calls) == value(before, calls) + 2
    sent = 'maskserve_model_tier_bytes_total{direction="sent"}'
    assert len(photo) < value(after, sent) - value(before, sent) < len(photo) + 4096  # the image once, then prompts
    assert value(after, "maskserve_event_loop_lag_seconds_count") > 0
