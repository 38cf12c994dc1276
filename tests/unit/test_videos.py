"""Videos (API.md v1.2, "Video") through the handlers over the fake model tier: the contract's shapes,
statuses, limits and credits. The same routes run through the real Triton in tests/e2e/test_video_api.py."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from maskserve.core import encodings
from maskserve.devtools.pictures import clip_file, image_bytes, moving_shapes_clip
from tests.plugins.calls import auth, form

VIDEO = re.compile(r"^vid_[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return clip_file(moving_shapes_clip(tmp_path_factory.mktemp("clip"), 12, 320, 240), "mp4")


async def _open(client, secret: str, data: bytes, query: str = "") -> dict:
    r = await client.post(f"/v1/videos{query}", data=form("file", data), headers=auth(secret))
    assert r.status == 201, await r.text()
    return await r.json()


def _point(x: int, y: int) -> str:
    return quote(json.dumps([[x, y]]))


async def _prompt(client, secret: str, video_id: str, frame: int, obj: int = 1, x: int = 100, y: int = 100):
    return await client.post(
        f"/v1/videos/{video_id}/prompts?frame={frame}&object_id={obj}&points={_point(x, y)}", headers=auth(secret)
    )


async def _finished(client, secret: str, job_id: str) -> dict:
    for _ in range(200):
        body = await (await client.get(f"/v1/jobs/{job_id}", headers=auth(secret))).json()
        assert "progress" in body
        if body["status"] in ("completed", "failed"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the propagation did not end")


async def test_upload_prompt_propagate_and_delete(client, new_key, clip, fake):
    _, secret = await new_key(30)
    opened = await _open(client, secret, clip)
    assert VIDEO.match(opened["video_id"]) and opened["frames"] == 12
    assert (opened["width"], opened["height"], opened["fps"]) == (320, 240, 10.0) and opened["expires_at"].endswith("Z")
    video_id = opened["video_id"]

    r = await _prompt(client, secret, video_id, 3, 2, 160, 120)
    assert r.status == 200, await r.text()
    assert r.headers["X-Credits-Charged"] == "1" and r.headers["X-Credits-Remaining"] == "29"
    body = await r.json()
    assert (body["frame"], body["object_id"]) == (3, 2) and body["area"] > 0 and body["mask"]["format"] == "rle"
    png = await (await client.get(body["output_url"][body["output_url"].index("/v1/") :])).read()
    mask = np.asarray(Image.open(io.BytesIO(png))) > 0
    assert np.array_equal(mask, encodings.rle_decode(body["mask"]))  # the PNG and the RLE are one mask
    job = await (await client.get(f"/v1/jobs/{body['job_id']}", headers=auth(secret))).json()
    assert job["status"] == "completed" and job["credits_used"] == 1

    state = await (await client.get(f"/v1/videos/{video_id}", headers=auth(secret))).json()
    assert state["objects"] == [{"object_id": 2, "prompted_frames": [3]}] and state["last_job_id"] == body["job_id"]

    r = await client.post(f"/v1/videos/{video_id}/propagate?direction=both&max_frames=4", headers=auth(secret))
    assert r.status == 202, await r.text()
    accepted = await r.json()
    assert accepted["progress"]["frames_total"] == 7  # frames 3, 2, 1, 0 backward, then 4, 5, 6
    busy = await client.post(f"/v1/videos/{video_id}/propagate", headers=auth(secret))
    assert busy.status in (409, 202)
    done = await _finished(client, secret, accepted["job_id"])
    assert done["status"] == "completed" and done["credits_used"] == 7 and done["progress"]["frames_done"] == 7
    result = json.loads(await (await client.get(done["output_url"][done["output_url"].index("/v1/") :])).read())
    assert [f["frame"] for f in result["frames"]] == [3, 2, 1, 0, 4, 5, 6]
    assert all([o["object_id"] for o in f["objects"]] == [2] for f in result["frames"])
    preview = await client.get(done["preview_url"][done["preview_url"].index("/v1/") :])
    assert preview.status == 200 and preview.headers["Content-Type"] == "video/mp4"

    r = await client.delete(f"/v1/videos/{video_id}", headers=auth(secret))
    assert r.status == 204 and fake.closed == [video_id]
    assert (await client.get(f"/v1/videos/{video_id}", headers=auth(secret))).status == 404
    assert (await _prompt(client, secret, video_id, 0)).status == 404


async def test_refusals(client, new_key, clip, tmp_path):
    _, secret = await new_key(2)
    _, other = await new_key(2)
    for data, status in (
        (image_bytes(seed=3), 422),  # a JPEG is not a video
        (clip[: len(clip) // 3], 422),  # truncated
        (b"", 422),
        (clip_file(moving_shapes_clip(tmp_path / "one", 1), "gif"), 422),  # one frame: a still
    ):
        r = await client.post("/v1/videos", data=form("file", data), headers=auth(secret))
        assert r.status == status, (status, await r.text())
        assert r.status != 422 or (await r.json())["detail"][0]["loc"] == ["body", "file"]
    assert (await client.post("/v1/videos", headers=auth(secret))).status == 400
    assert (await client.post("/v1/videos?fps=0", data=form("file", clip), headers=auth(secret))).status == 422
    video_id = (await _open(client, secret, clip, "?fps=5"))["video_id"]
    for path in (f"/v1/videos/{video_id}", "/v1/videos/vid_0", f"/v1/videos/vid_{'0' * 32}"):
        r = await client.get(path, headers=auth(other if path.endswith(video_id) else secret))
        assert r.status == 404 and (await r.json())["detail"] == "Unknown or expired video_id"
    assert (await client.post(f"/v1/videos/{video_id}/propagate", headers=auth(secret))).status == 400  # no prompts
    assert (await _prompt(client, secret, video_id, 6)).status == 422  # 6 frames kept at 5 fps: 0..5
    assert (await _prompt(client, secret, video_id, 0, obj=17)).status == 422
    assert (await _prompt(client, secret, video_id, 0)).status == 200
    r = await client.post(f"/v1/videos/{video_id}/propagate", headers=auth(secret))  # 6 frames, 1 credit left
    assert r.status == 402
    assert (await client.get("/v1/account", headers=auth(secret))).status == 200


async def test_open_videos_are_limited_per_key(make_client, clip):
    client = await make_client(max_open_videos=2)
    from maskserve.frontend.http.state import STORE

    _, secret = await client.app[STORE].create_key("unit", 5)
    first = await _open(client, secret, clip)
    await _open(client, secret, clip)
    r = await client.post("/v1/videos", data=form("file", clip), headers=auth(secret))
    assert r.status == 409 and (await r.json())["detail"] == "Too many open videos: delete one first"
    assert (await client.delete(f"/v1/videos/{first['video_id']}", headers=auth(secret))).status == 204
    await _open(client, secret, clip)


async def test_limits_name_themselves(make_client, tmp_path):
    client = await make_client(max_video_frames=5)
    from maskserve.frontend.http.state import STORE

    _, secret = await client.app[STORE].create_key("unit", 5)
    many = clip_file(moving_shapes_clip(tmp_path / "many", 8), "webm")
    r = await client.post("/v1/videos", data=form("file", many), headers=auth(secret))
    assert r.status == 413 and "max_video_frames=5" in (await r.json())["detail"]
    wide = clip_file(moving_shapes_clip(tmp_path / "wide", 3, 2000, 200), "mp4")
    r = await client.post("/v1/videos", data=form("file", wide), headers=auth(secret))
    assert r.status == 413 and "1920" in (await r.json())["detail"]
    assert Path(tmp_path).exists()
