"""What paying clients rely on (API.md v1.1), through the real service: safe retries, cost and timing headers,
and extraction styling (bg_color, crop, crop_margin, channels, jpeg).

Each styled output's pixels are checked against the inputs: the uploaded mask
fixes the alpha exactly, so the expected picture can be computed here from the
image and the mask alone.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from maskserve.devtools.pictures import image_bytes, png_mask
from tests.plugins.calls import EXT, SEG, fetch, ledger_state, post
from tests.plugins.stack import start_api

W, H = 320, 240
BOX = (40, 60, 200, 150)  # x1, y1, x2, y2 (end exclusive) of the white mask


def inputs(soft: bool = False, box: tuple[int, int, int, int] = BOX) -> tuple[dict, np.ndarray, np.ndarray]:
    photo = image_bytes(W, H, fmt="PNG", seed=7)
    mask = png_mask(W, H, box, soft=soft)
    files = {"image": ("p.png", photo, "image/png"), "mask": ("m.png", mask, "image/png")}
    return files, np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")), np.asarray(Image.open(io.BytesIO(mask)))


def output(r: requests.Response) -> tuple[dict, Image.Image]:
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    got = fetch(result["output_url"])
    assert got.status_code == 200
    return result, Image.open(io.BytesIO(got.content))


def test_twenty_concurrent_retries_charge_once_and_replay_the_same_jobs(api, report):
    key_id, secret = api.create_key(10)
    photos = [image_bytes(W, H, seed=60 + i) for i in range(3)]

    def one(_: int) -> requests.Response:
        files = [("files", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
        return requests.post(
            f"{api.url}{SEG}/batch",
            params={"points": "[[100, 100]]"},
            files=files,
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "nightly-run-42"},
            timeout=120,
        )

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 409} and 200 in statuses, statuses
    done = [r for r in answers if r.status_code == 200]
    assert len({r.json()["batch_id"] for r in done}) == 1
    assert len({tuple(j["job_id"] for j in r.json()["results"]) for r in done}) == 1
    assert sum(r.headers["X-Credits-Charged"] == "3" for r in done) == 1  # the one that ran
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in done if r.headers["X-Credits-Charged"] == "0")
    state = ledger_state(api.settings.database_path, key_id)
    assert state["balance"] == 7 and state["ledger"] == 7 and state["charged"] == 3 and state["completed"] == 3
    later = one(0)
    assert later.status_code == 200 and later.headers["Idempotent-Replayed"] == "true"
    assert later.json() == done[0].json() and later.headers["X-Credits-Remaining"] == "7"
    report(
        f"idempotency: 20 concurrent retries of a 3-image batch: {statuses.count(200)} × 200 (one ran, the rest "
        f"replays), {statuses.count(409)} × 409; charged 3 once, balance 7"
    )


def test_cost_and_timing_headers_come_from_the_real_path(api, key):
    files = {"file": ("p.jpg", image_bytes(W, H, seed=70), "image/jpeg")}
    r = post(api, SEG, key, files, points=[[100, 100]])
    assert r.status_code == 200 and r.headers["X-Credits-Charged"] == "1"
    assert (
        int(r.headers["X-Credits-Remaining"])
        == requests.get(f"{api.url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()[
            "credits"
        ]
    )
    assert r.headers["X-Model-Version"].startswith("sam2.1_hiera_tiny/")
    stages = [part.split(";")[0] for part in r.headers["Server-Timing"].split(", ")]
    assert stages == ["decode", "encode", "render", "store"], r.headers["Server-Timing"]
    again = post(api, SEG, key, files, points=[[120, 100]])
    assert [p.split(";")[0] for p in again.headers["Server-Timing"].split(", ")] == [
        "decode",
        "embeddings",
        "mask",
        "render",
        "store",
    ]


def test_opaque_background_colour_fills_where_alpha_was_zero(api, key):
    files, rgb, alpha = inputs(soft=True)
    result, img = output(post(api, EXT, key, files, bg_color="#10c0f0", output_format="png"))
    assert img.mode == "RGB" and result["credits_used"] == 2
    out = np.asarray(img).astype(np.int32)
    assert (out[alpha == 0] == [0x10, 0xC0, 0xF0]).all()
    assert (out[alpha == 255] == rgb[alpha == 255]).all()
    a = alpha.astype(np.float64)[..., None] / 255
    expected = rgb * a + np.array([0x10, 0xC0, 0xF0]) * (1 - a)
    assert np.abs(out - expected).max() <= 1  # the soft ramp blends the two


def test_translucent_background_colour_composites_over(api, key):
    files, _, alpha = inputs(soft=True)
    _, img = output(post(api, EXT, key, files, bg_color="#ff000080", output_format="png"))
    out = np.asarray(img).astype(np.int32)
    assert img.mode == "RGBA"
    a = alpha.astype(np.float64) / 255
    assert np.abs(out[..., 3] - (a + 128 / 255 * (1 - a)) * 255).max() <= 1
    assert (out[alpha == 0] == [255, 0, 0, 128]).all()


def test_crop_is_the_mask_box_plus_the_margin_and_grows_past_the_edges(api, key):
    files, rgb, _ = inputs()
    result, img = output(post(api, EXT, key, files, crop="true", crop_margin="10", output_format="png"))
    x1, y1, x2, y2 = BOX
    assert img.size == (x2 - x1 + 20, y2 - y1 + 20)
    assert (result["output_width"], result["output_height"]) == img.size
    assert (result["original_width"], result["original_height"]) == (W, H)
    out = np.asarray(img)
    assert (out[10:-10, 10:-10, :3] == rgb[y1:y2, x1:x2]).all() and (out[10:-10, 10:-10, 3] == 255).all()
    assert (out[:10, :, 3] == 0).all() and (out[:, -10:, 3] == 0).all()
    # a region touching the corner: the margin reaches past the image, transparent there
    files, rgb, _ = inputs(box=(0, 0, 50, 30))
    _, img = output(post(api, EXT, key, files, crop="true", crop_margin="5", output_format="png"))
    out = np.asarray(img)
    assert img.size == (60, 40) and (out[:5, :, 3] == 0).all() and (out[5:35, 5:55, :3] == rgb[:30, :50]).all()


def test_alpha_only_is_the_final_alpha(api, key):
    files, _, alpha = inputs(soft=True)
    _, img = output(post(api, EXT, key, files, channels="alpha", feather="0"))
    assert img.format == "PNG" and img.mode == "L"
    assert (np.asarray(img) == alpha).all()
    files, _, alpha = inputs()
    _, img = output(post(api, EXT, key, files, channels="alpha", crop="true"))
    x1, y1, x2, y2 = BOX
    assert (np.asarray(img) == alpha[y1:y2, x1:x2]).all()


def test_jpeg_only_when_opaque(api, key):
    files, rgb, alpha = inputs()
    _, img = output(post(api, EXT, key, files, bg_color="#ffffff", output_format="jpeg"))
    assert img.format == "JPEG" and img.size == (W, H)
    out = np.asarray(img).astype(np.int32)
    inside = out[BOX[1] + 4 : BOX[3] - 4, BOX[0] + 4 : BOX[2] - 4]
    assert np.abs(inside - rgb[BOX[1] + 4 : BOX[3] - 4, BOX[0] + 4 : BOX[2] - 4]).mean() < 4  # lossy, but close
    assert np.abs(out[alpha == 0][:1000] - 255).mean() < 4
    for params in ({"output_format": "jpeg"}, {"output_format": "jpeg", "bg_color": "#ffffff80"}):
        r = post(api, EXT, key, inputs()[0], **params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "output_format"], r.text


def test_empty_mask_with_crop_is_422_single_and_a_failed_item_in_a_batch_never_charged(api):
    key_id, secret = api.create_key(10)
    empty = png_mask(W, H, (0, 0, 0, 0))
    photo = image_bytes(W, H, fmt="PNG", seed=8)
    r = post(
        api, EXT, secret, {"image": ("p.png", photo, "image/png"), "mask": ("m.png", empty, "image/png")}, crop="true"
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "crop"], r.text
    files = [
        ("images", ("a.png", photo, "image/png")),
        ("masks", ("a.png", empty, "image/png")),
        ("images", ("b.png", photo, "image/png")),
        ("masks", ("b.png", png_mask(W, H, BOX), "image/png")),
    ]
    r = post(api, f"{EXT}/batch", secret, files, crop="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["completed"], body["failed"], body["total_credits_used"]) == (1, 1, 2)
    failed, done = body["results"]
    assert failed["status"] == "failed" and "nothing to crop" in failed["error"] and failed["credits_used"] == 0
    assert (done["output_width"], done["output_height"]) == (BOX[2] - BOX[0], BOX[3] - BOX[1])
    state = ledger_state(api.settings.database_path, key_id)
    assert state["balance"] == 8 and state["charged"] == 2 and state["processing"] == 0


def test_styling_applies_to_prompted_batches_too(api, key):
    photo = image_bytes(W, H, fmt="PNG", seed=9)
    files = [("images", (f"{i}.png", photo, "image/png")) for i in range(2)]
    r = post(api, f"{EXT}/batch", key, files, points=[[160, 120]], bg_color="#000000", output_format="jpeg")
    assert r.status_code == 200, r.text
    for item in r.json()["results"]:
        got = fetch(item["output_url"])
        assert got.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(got.content)).mode == "RGB"


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"bg_color": "red"}, "bg_color"),
        ({"bg_color": "#12345"}, "bg_color"),
        ({"bg_color": "#1234567g"}, "bg_color"),
        ({"crop": "yes"}, "crop"),
        ({"crop": "true", "crop_margin": "501"}, "crop_margin"),
        ({"crop": "true", "crop_margin": "-1"}, "crop_margin"),
        ({"crop_margin": "5"}, "crop_margin"),
        ({"channels": "rgb"}, "channels"),
        ({"channels": "alpha", "output_format": "webp"}, "output_format"),
        ({"channels": "alpha", "bg_color": "#000000"}, "bg_color"),
        ({"output_format": "gif"}, "output_format"),
    ],
)
def test_hostile_styling_gets_422(api, key, params, name):
    r = post(api, EXT, key, inputs()[0], **params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", name], r.text


def test_an_async_job_through_triton_ends_in_a_signed_webhook(triton_server, tmp_path_factory, report):
    """The real path end to end: 202, the job runs on Triton, the webhook arrives signed and verifiable."""
    from tests.plugins.calls import documented_verify

    got: list[tuple[str, bytes]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((self.headers["Maskserve-Signature"], self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, webhook_private_targets="allow", webhook_poll_s=0.1)
    try:
        key_id, secret = api.create_key(10)
        hook_secret = api.rotate_webhook_secret(key_id)
        started = time.monotonic()
        r = requests.post(
            f"{api.url}{SEG}",
            params={
                "points": "[[100, 100]]",
                "async": "true",
                "webhook_url": f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            },
            files={"file": ("p.jpg", image_bytes(W, H, seed=80), "image/jpeg")},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )
        assert r.status_code == 202 and r.json()["status"] == "processing", r.text
        while not got:
            assert time.monotonic() - started < 60, "no webhook arrived"
            time.sleep(0.1)
        header, body = got[0]
        assert documented_verify()(hook_secret, header, body)
        sent = json.loads(body)
        assert sent["job_id"] == r.json()["job_id"] and sent["status"] == "completed"
        assert fetch(sent["result"]["output_url"]).status_code == 200
        state = ledger_state(api.settings.database_path, key_id)
        assert state["charged"] == 1 and state["balance"] == 9
        report(f"async + webhook on the real path: 202, then a signed webhook {time.monotonic() - started:.1f} s later")
    finally:
        api.stop()
        receiver.shutdown()
