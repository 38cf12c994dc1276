"""The playground in a real browser: Debian's Chromium driven by Playwright, against the real service.

It does what a person does (paste a key, upload, click, drag, extract, download) and checks
what they would see against what the API itself returns for the same request. Set
``MASKSERVE_SCREENSHOTS=DIR`` to keep the screenshots (the ones in ``docs/`` come from here).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import numpy as np
import pytest
import requests
from PIL import Image
from playwright import sync_api as playwright

from maskserve.core import encodings
from maskserve.devtools.pictures import clip_file, image_bytes, moving_shapes_clip
from tests.plugins.calls import auth, ledger_state

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    # A missing browser is a failed setup, not a reason to skip the test.
    assert CHROMIUM, "Debian's chromium is not installed (scripts/setup.sh installs it)"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.problems = problems
    yield page
    context.close()


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("MASKSERVE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def _overlay(page) -> np.ndarray:
    """The overlay canvas as the person sees it: True where the mask colour is painted."""
    return _canvas_alpha(page, "overlay")


def _canvas_alpha(page, canvas: str) -> np.ndarray:
    width, height, text = page.evaluate(
        """(id) => {
            const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = '';
            for (let i = 3; i < d.length; i += 4) s += d[i] > 0 ? '1' : '0';
            return [c.width, c.height, s];
        }""",
        canvas,
    )
    return (np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")).reshape(height, width)


def _click_image(page, x: int, y: int, button: str = "left") -> None:
    box = page.locator("#marks").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('marks').width")
    page.mouse.click(box["x"] + (x + 0.25) * scale, box["y"] + (y + 0.25) * scale, button=button)


def _drag_box(page, x1: int, y1: int, x2: int, y2: int) -> None:
    box = page.locator("#marks").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('marks').width")
    page.mouse.move(box["x"] + (x1 + 0.25) * scale, box["y"] + (y1 + 0.25) * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + (x2 + 0.25) * scale, box["y"] + (y2 + 0.25) * scale, steps=8)
    page.mouse.up()


def _wait_for_new_job(page, previous: str | None) -> str:
    page.wait_for_function(
        "prev => { const id = document.getElementById('overlay').dataset.jobId; return id && id !== prev; }",
        arg=previous or "",
        timeout=60_000,
    )
    return page.get_attribute("#overlay", "data-job-id")


def _curl_url(page) -> tuple[str, dict[str, str]]:
    text = page.inner_text("#curl")
    url = re.search(r"'(http[^']+)'", text).group(1)
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def _job_mask(api, secret: str, job_id: str) -> requests.Response:
    job = requests.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(secret)).json()
    return requests.get(job["output_url"])


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_a_person_segments_refines_extracts_and_downloads(api, page, tmp_path):
    key_id, secret = api.create_key(60)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(480, 360, seed=901))

    response = page.goto(f"{api.url}/playground")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp

    # the key goes into this tab's sessionStorage only
    page.fill("#api-key", secret)
    page.click("#use-key")
    page.wait_for_function("() => document.getElementById('credits').textContent === '60'")
    assert page.evaluate("sessionStorage.getItem('maskserve.apiKey')") == secret
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    assert page.is_visible("#weights")  # the test service runs random weights and the page says so

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#canvas-wrap", state="visible")

    # 1. a left click: a foreground point, a new image (encoded), one credit
    _click_image(page, 240, 180)
    first = _wait_for_new_job(page, None)
    path, query = _curl_url(page)
    assert path == "/v1/services/image-segmentation" and json.loads(query["labels"]) == [1]
    point = json.loads(query["points"])
    assert "previous_job_id" not in query
    seen = _overlay(page)
    # what the page drew is the mask of its own job ...
    own = _job_mask(api, secret, first)
    assert np.array_equal(seen, _png(own.content) > 127)
    # ... and the mask the API returns for the same prompt
    page.wait_for_function("() => document.getElementById('credits').textContent === '59'")
    again = requests.post(
        f"{api.url}/v1/services/image-segmentation",
        params={"points": json.dumps(point), "labels": "[1]"},
        files={"file": ("photo.jpg", photo.read_bytes(), "image/jpeg")},
        headers=auth(secret),
    )
    assert again.status_code == 200, again.text
    api_mask = _png(requests.get(again.json()["result"]["output_url"]).content) > 127
    assert seen.shape == (360, 480) and np.array_equal(seen, api_mask)
    assert 0 < seen.sum() < seen.size  # a mask with both sides, so the comparison means something
    _screenshot(page, "playground-click.png")

    # 2. a right click refines the mask with a background point, from the cached embeddings
    _click_image(page, 60, 40, button="right")
    second = _wait_for_new_job(page, first)
    _, query = _curl_url(page)
    assert query["previous_job_id"] == first and json.loads(query["labels"]) == [1, 0]
    assert "embeddings (cached)" in page.inner_text("#timing")
    # the image went up once: this click sent only its handle
    assert query["image_id"].startswith("img_") and "-F" not in page.inner_text("#curl")
    assert "decode" not in page.inner_text("#timing")
    own = _job_mask(api, secret, second)
    assert np.array_equal(_overlay(page), _png(own.content) > 127)

    # 3. a drag draws a box, refined again
    _drag_box(page, 100, 80, 380, 290)
    third = _wait_for_new_job(page, second)
    _, query = _curl_url(page)
    assert json.loads(query["box"]) == [100, 80, 380, 290] and query["previous_job_id"] == second
    assert third != second

    # 4. undo goes back to the second mask without a request (and without a charge)
    page.click("#undo")
    assert page.get_attribute("#overlay", "data-job-id") == second
    assert page.inner_text("#credits") == "56"

    # 5. segment everything: a coloured overlay with one colour per mask
    page.fill("#points-per-side", "4")
    page.fill("#pred-iou", "0")
    page.fill("#stability", "0")
    page.click("#everything")
    page.wait_for_function("() => document.getElementById('overlay').dataset.kind === 'everything'", timeout=120_000)
    count = int(page.get_attribute("#overlay", "data-count"))
    assert count >= 1 and page.inner_text("#credits") == "52"
    _screenshot(page, "playground-everything.png")

    # 6. back to prompting, then extraction with feather, crop and a background colour
    everything_job = page.get_attribute("#overlay", "data-job-id")
    _click_image(page, 240, 180)
    fourth = _wait_for_new_job(page, everything_job)
    assert page.get_attribute("#overlay", "data-kind") == "mask"
    _, query = _curl_url(page)
    assert query["previous_job_id"] == second  # refines the mask it showed before, not the everything run
    seen = _overlay(page)
    page.fill("#feather", "4")
    page.check("#crop")
    page.fill("#crop-margin", "10")
    page.check("#use-bg")
    page.fill("#bg-color", "#336699")
    page.select_option("#output-format", "png")
    page.click("#extract")
    page.wait_for_selector("#cutout-figure", state="visible", timeout=60_000)
    path, query = _curl_url(page)
    assert path == "/v1/services/object-extraction"
    assert query.pop("image_id").startswith("img_")  # the cut-out too names the image by its handle
    assert query == {"feather": "4", "output_format": "png", "bg_color": "#336699", "crop": "true", "crop_margin": "10"}
    assert page.inner_text("#credits") == str(52 - 1 - 2)
    _screenshot(page, "playground.png")

    with page.expect_download() as download_info:
        page.click("#download-cutout")
    download = download_info.value
    assert download.suggested_filename == "photo-cutout.png"
    cutout = tmp_path / "downloaded-cutout.png"
    download.save_as(cutout)
    with page.expect_download() as download_info:
        page.click("#download-mask")
    mask_file = tmp_path / "photo-mask.png"
    download_info.value.save_as(mask_file)
    assert np.array_equal(_png(mask_file.read_bytes()) > 127, seen)

    # the cut-out is what the API makes from that image and mask with the same settings
    reference = requests.post(
        f"{api.url}/v1/services/object-extraction",
        params=query,
        files={"image": ("photo.jpg", photo.read_bytes()), "mask": ("m.png", mask_file.read_bytes())},
        headers=auth(secret),
    )
    assert reference.status_code == 200, reference.text
    expected = _png(requests.get(reference.json()["result"]["output_url"]).content)
    got = _png(cutout.read_bytes())
    ys, xs = np.nonzero(seen)
    if len(xs):  # crop: the mask's box plus the margin on every side
        assert got.shape[:2] == (ys.max() - ys.min() + 1 + 20, xs.max() - xs.min() + 1 + 20)
    assert np.array_equal(got, expected)

    # the curl command the page shows works as written (photo.jpg and photo-mask.png are here), key from the env
    command = page.inner_text("#curl")
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env={**os.environ, "MASKSERVE_API_KEY": secret},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "completed", done.stdout + done.stderr

    # 4 clicks + 1 direct call, everything, 3 extractions (the page's, the reference, the curl)
    assert ledger_state(api.settings.database_path, key_id)["balance"] == 60 - 5 - 4 - 3 * 2
    assert fourth and page.problems == []

    # the key survives a reload of this tab, and nothing else keeps it
    page.reload()
    assert page.input_value("#api-key") == secret


def test_a_wrong_key_and_a_bad_file_get_clear_messages(api, page, tmp_path):
    page.goto(f"{api.url}/playground")
    page.fill("#api-key", "sk-live-not-a-real-key")
    page.click("#use-key")
    page.wait_for_selector("#status.error")
    assert "401" in page.inner_text("#status") and "Invalid or missing API key" in page.inner_text("#status")
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"not an image at all")
    page.set_input_files("#file", str(bogus))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('not an image')")
    assert page.is_hidden("#canvas-wrap")
    # 401s logged by the browser are the expected answers; nothing else went wrong in the page
    assert all("401" in p for p in page.problems), page.problems


def test_the_page_loads_nothing_from_elsewhere_and_keeps_its_policy(api, page):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{api.url}/playground")
    page.wait_for_load_state("networkidle")
    assert requested and all(u.startswith(api.url) for u in requested), requested
    # an inline script is refused by the Content-Security-Policy
    page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';
                   document.body.append(s); }"""
    )
    assert page.evaluate("window.injected") is None
    assert any("Content Security Policy" in p for p in page.problems)


def test_the_playground_works_when_files_come_from_an_object_store(
    tmp_path_factory, triton_server, s3_server, s3_bucket, page, tmp_path
):
    """With the s3 backend, file links answer 302 to another origin: the page's policy and the bucket let it follow."""
    from tests.plugins.stack import start_api

    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, **s3_server.settings(s3_bucket))
    try:
        _, secret = api.create_key(10)
        photo = tmp_path / "shop.png"
        Image.open(io.BytesIO(image_bytes(240, 180, seed=902))).save(photo)
        response = page.goto(f"{api.url}/playground")
        assert s3_server.url in response.headers["content-security-policy"]
        page.fill("#api-key", secret)
        page.click("#use-key")
        page.wait_for_function("() => document.getElementById('credits').textContent === '10'")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#canvas-wrap", state="visible")
        _click_image(page, 120, 90)
        job = _wait_for_new_job(page, None)
        page.click("#extract")  # fetches the shown mask through its link: a 302 to the store
        page.wait_for_selector("#cutout-figure", state="visible", timeout=60_000)
        cut_job = page.get_attribute("#cutout", "data-job-id")
        with page.expect_download() as download_info:
            page.click("#download-cutout")
        saved = tmp_path / "cut.png"
        download_info.value.save_as(saved)
        stored = s3_server.client().get_object(Bucket=s3_bucket, Key=f"{cut_job}.png")["Body"].read()
        assert saved.read_bytes() == stored and job != cut_job
        assert page.problems == []
        cors = s3_server.client().get_bucket_cors(Bucket=s3_bucket)["CORSRules"]
        assert cors == [{"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"], "MaxAgeSeconds": 3600}]
    finally:
        api.stop()


def _frame_pixels(page) -> np.ndarray:
    """The frame canvas of the video tab as the person sees it (RGB)."""
    width, height, data = page.evaluate(
        """() => {
            const c = document.getElementById('frame-layer');
            return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
        }"""
    )
    return np.array(data, np.uint8).reshape(height, width, 4)[..., :3]


def _video_overlay(page) -> np.ndarray:
    """The video tab's overlay: True where any object's colour is painted."""
    return _canvas_alpha(page, "video-overlay")


def _scrub_to(page, frame: int) -> None:
    """As a person does with the keyboard on the frame slider."""
    page.focus("#frame")
    current = int(page.input_value("#frame"))
    for _ in range(abs(frame - current)):
        page.keyboard.press("ArrowRight" if frame > current else "ArrowLeft")
    page.wait_for_function("f => document.getElementById('video-overlay').dataset.frame === String(f)", arg=frame)


def _click_frame(page, x: int, y: int, button: str = "left") -> None:
    box = page.locator("#video-marks").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('video-marks').width")
    page.mouse.click(box["x"] + (x + 0.25) * scale, box["y"] + (y + 0.25) * scale, button=button)


def _propagated(page, api, secret: str) -> dict:
    page.wait_for_function(
        "() => document.getElementById('video-overlay').dataset.propagation !== 'running'", timeout=300_000
    )
    assert page.get_attribute("#video-overlay", "data-propagation") == "done", page.inner_text("#status")
    job_id = page.get_attribute("#video-overlay", "data-propagation-job")
    return requests.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(secret), timeout=30).json()


def test_a_person_tracks_an_object_through_a_video(api, page, tmp_path):
    """The video tab: upload once, scrub, click, propagate with a progress bar, scrub through the masks,
    correct a later frame, propagate again from there, and download the preview."""
    frames = 8
    key_id, secret = api.create_key(40)
    stills = moving_shapes_clip(tmp_path / "frames", frames, 320, 240)
    clip = tmp_path / "clip.webm"  # VP9: a codec every Chromium build decodes
    clip.write_bytes(clip_file(stills, "webm"))

    response = page.goto(f"{api.url}/playground")
    assert "media-src blob:" in response.headers["content-security-policy"]
    page.fill("#api-key", secret)
    page.click("#use-key")
    page.wait_for_function("() => document.getElementById('credits').textContent === '40'")
    page.click("#tab-video")
    assert page.is_hidden("#image-controls") and page.is_visible("#video-controls")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_selector("#video-wrap", state="visible", timeout=60_000)
    video_id = page.get_attribute("#video-overlay", "data-video-id")
    assert video_id.startswith("vid_") and f"{frames} frames" in page.inner_text("#video-info")
    state = requests.get(f"{api.url}/v1/videos/{video_id}", headers=auth(secret), timeout=30).json()
    assert (state["frames"], state["width"], state["height"]) == (frames, 320, 240)

    # scrubbing shows the frame the slider names: the browser's own decode of the file, nearest to that still
    _scrub_to(page, 2)
    shown = _frame_pixels(page).astype(np.int16)
    errors = [np.abs(shown - np.asarray(Image.open(p).convert("RGB"), np.int16)).mean() for p in stills]
    assert int(np.argmin(errors)) == 2 and errors[2] < 12, errors

    # a click on the ellipse of frame 2: object 1's mask there, at once, 1 credit
    _click_frame(page, 96, 100)
    page.wait_for_function("() => document.getElementById('video-overlay').dataset.objects === '1'", timeout=120_000)
    prompt_job = page.get_attribute("#video-overlay", "data-job-id")
    job = requests.get(f"{api.url}/v1/jobs/{prompt_job}", headers=auth(secret), timeout=30).json()
    clicked = _png(requests.get(job["output_url"], timeout=30).content) > 127
    assert np.array_equal(_video_overlay(page), clicked) and 0 < clicked.sum() < clicked.size
    page.wait_for_function("() => document.getElementById('credits').textContent === '39'")
    _screenshot(page, "playground-video-click.png")

    # propagate both ways with a progress bar, then scrub through the tracked masks
    page.click("#propagate")
    page.wait_for_selector("#progress", state="visible")
    done = _propagated(page, api, secret)
    assert done["status"] == "completed" and done["credits_used"] == frames
    assert page.get_attribute("#progress", "value") == str(frames) and f"{frames} of {frames}" in page.inner_text(
        "#progress-text"
    )
    result = requests.get(done["output_url"], timeout=30).json()
    tracked = {f["frame"]: encodings.rle_decode(f["objects"][0]["mask"]).astype(bool) for f in result["frames"]}
    for frame in (5, 0):
        _scrub_to(page, frame)
        assert np.array_equal(_video_overlay(page), tracked[frame])
    _screenshot(page, "playground-video.png")

    # a correction on frame 6 (a background point), then propagate forward from the shown frame
    _scrub_to(page, 6)
    before = page.get_attribute("#video-overlay", "data-job-id")
    _click_frame(page, 20, 20, button="right")
    page.wait_for_function(
        "b => document.getElementById('video-overlay').dataset.jobId !== b", arg=before, timeout=120_000
    )
    page.select_option("#direction", "forward")
    page.check("#from-frame")
    page.click("#propagate")
    again = _propagated(page, api, secret)
    assert again["status"] == "completed" and again["credits_used"] == frames - 6
    result = requests.get(again["output_url"], timeout=30).json()
    assert [f["frame"] for f in result["frames"]] == [6, 7]
    _scrub_to(page, 7)
    assert np.array_equal(_video_overlay(page), encodings.rle_decode(result["frames"][1]["objects"][0]["mask"]) > 0)
    state = requests.get(f"{api.url}/v1/videos/{video_id}", headers=auth(secret), timeout=30).json()
    assert state["objects"] == [{"object_id": 1, "prompted_frames": [2, 6]}]

    # the preview: the processed frames with the masks overlaid, as the API links it
    with page.expect_download() as download_info:
        page.click("#download-preview")
    saved = tmp_path / "preview"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename.startswith("clip-preview.")
    assert saved.read_bytes() == requests.get(again["preview_url"], timeout=30).content
    with av.open(str(saved)) as container:
        assert sum(1 for _ in container.decode(video=0)) == frames - 6

    assert ledger_state(api.settings.database_path, key_id)["balance"] == 40 - 1 - frames - 1 - (frames - 6)
    assert page.problems == []
