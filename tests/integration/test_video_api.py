"""``/v1/videos`` end to end through the real Triton (the suite's exported repository, with its video graphs):
upload an MP4, click on a frame, propagate both ways, refine and propagate again, read the JSON result and the
preview (decoded back with PyAV), pay exactly, and delete mid-propagation for a full refund."""

from __future__ import annotations

import io
import json
import time
from urllib.parse import quote

import av
import numpy as np
import pytest
import requests

from maskserve.core import encodings
from maskserve.devtools.pictures import clip_file, moving_shapes_clip

pytestmark = pytest.mark.timeout(900)
FRAMES = 8


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _wait(api, secret: str, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{api.url}/v1/jobs/{job_id}", headers=_auth(secret), timeout=30).json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"propagation {job_id} did not end")


def _balance(api, secret: str) -> int:
    return requests.get(f"{api.url}/v1/account", headers=_auth(secret), timeout=30).json()["credits"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return clip_file(moving_shapes_clip(tmp_path_factory.mktemp("clip"), FRAMES, 320, 240), "mp4")


def _open(api, secret: str, clip: bytes) -> str:
    r = requests.post(f"{api.url}/v1/videos", files={"file": ("clip.mp4", clip)}, headers=_auth(secret), timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["video_id"]


def _prompt(api, secret: str, video_id: str, frame: int, x: int, y: int, label: int = 1) -> dict:
    points, labels = quote(json.dumps([[x, y]])), quote(json.dumps([label]))
    r = requests.post(
        f"{api.url}/v1/videos/{video_id}/prompts?frame={frame}&object_id=1&points={points}&labels={labels}",
        headers=_auth(secret),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_video_session_through_triton(api, key, clip, report):
    start = _balance(api, key)
    video_id = _open(api, key, clip)
    began = time.perf_counter()
    clicked = _prompt(api, key, video_id, 3, 80 + 24, 100)
    first_mask_s = time.perf_counter() - began
    assert clicked["frame"] == 3 and clicked["mask"]["size"] == [240, 320]
    r = requests.post(f"{api.url}/v1/videos/{video_id}/propagate?direction=both", headers=_auth(key), timeout=60)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["progress"] == {"frames_done": 0, "frames_total": FRAMES}
    again = requests.post(f"{api.url}/v1/videos/{video_id}/propagate", headers=_auth(key), timeout=60)
    assert again.status_code == 409
    began = time.perf_counter()
    done = _wait(api, key, accepted["job_id"])
    tracked_s = time.perf_counter() - began
    assert done["status"] == "completed", done
    assert done["credits_used"] == FRAMES and done["progress"]["frames_done"] == FRAMES
    result = requests.get(done["output_url"], timeout=60).json()
    assert [f["frame"] for f in result["frames"]] == [3, 2, 1, 0, 4, 5, 6, 7]
    masks = {f["frame"]: encodings.rle_decode(f["objects"][0]["mask"]) for f in result["frames"]}
    assert np.array_equal(masks[3], encodings.rle_decode(clicked["mask"]))  # the clicked frame, as answered
    preview = requests.get(done["preview_url"], timeout=60)
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "video/mp4"
    with av.open(io.BytesIO(preview.content)) as container:
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(shown) == FRAMES and shown[0].shape[:2] == (240, 320)

    refined = _prompt(api, key, video_id, 6, 80 + 48, 100, 0)  # a correction after the propagation
    assert refined["frame"] == 6
    r = requests.post(
        f"{api.url}/v1/videos/{video_id}/propagate?start_frame=6&max_frames=2", headers=_auth(key), timeout=60
    )
    second = _wait(api, key, r.json()["job_id"])
    assert second["status"] == "completed" and second["credits_used"] == 2
    state = requests.get(f"{api.url}/v1/videos/{video_id}", headers=_auth(key), timeout=30).json()
    assert state["objects"] == [{"object_id": 1, "prompted_frames": [3, 6]}]
    assert start - _balance(api, key) == 1 + FRAMES + 1 + 2  # two prompts, two propagations: exactly

    r = requests.post(f"{api.url}/v1/videos/{video_id}/propagate", headers=_auth(key), timeout=60)
    job_id = r.json()["job_id"]
    assert requests.delete(f"{api.url}/v1/videos/{video_id}", headers=_auth(key), timeout=60).status_code == 204
    stopped = _wait(api, key, job_id, timeout=60)
    assert stopped["status"] == "failed" and stopped["credits_used"] == 0
    assert start - _balance(api, key) == 1 + FRAMES + 1 + 2  # the stopped one refunded in full
    assert requests.get(f"{api.url}/v1/videos/{video_id}", headers=_auth(key), timeout=30).status_code == 404
    report(
        f"video API through Triton ({FRAMES} frames 320x240, 2-core CPU): first mask after a click on a new frame "
        f"{first_mask_s:.2f} s; propagation {FRAMES / tracked_s:.2f} frames/s end to end"
    )


def test_the_sdk_and_the_cli_track_a_video(api, key, clip, tmp_path):
    import os
    import subprocess
    import sys

    from maskserve.client import Client

    with Client(api.url, key) as client:
        opened = client.open_video(clip, fps=5)
        assert opened["frames"] == FRAMES // 2 and opened["fps"] == 5.0
        clicked = client.video_prompt(opened["video_id"], 1, 2, points=[[104, 100]])
        assert clicked["object_id"] == 2 and clicked["mask"]["format"] == "rle"
        job = client.propagate(opened["video_id"], max_frames=2)
        heard: list[tuple[int, int]] = []
        ended = client.wait_propagation(job["job_id"], progress=lambda d, t: heard.append((d, t)))
        assert ended["status"] == "completed" and heard[-1] == (2, 2)
        client.delete_video(opened["video_id"])

    source = tmp_path / "clip.mp4"
    source.write_bytes(clip)
    out = tmp_path / "masks"
    run = subprocess.run(
        [sys.executable, "-m", "maskserve", "video", "track", str(source), "--point", "0:104,100",
         "--object", "2", "--box", "4:200,60,280,200", "--direction", "forward", "--url", api.url, "--out", str(out)],
        env={**os.environ, "MASKSERVE_API_KEY": key}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = json.loads((out / "masks.json").read_text())
    assert [f["frame"] for f in document["frames"]] == list(range(FRAMES))
    assert (out / "preview.mp4").stat().st_size > 0
    assert len(list(out.glob("*.png"))) == 2 * FRAMES  # every frame, both objects
