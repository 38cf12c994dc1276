"""Image handles (API.md v1.2) through the real Triton: clicks by image_id, and the image encoded again from
the kept upload when the model tier evicted it."""

from __future__ import annotations

import requests

from benchmarks.images import photo
from maskserve.triton.server import TritonOptions, TritonServer
from tests.plugins.calls import SEG, auth, fetch
from tests.plugins.stack import repository_with_cache, start_api

MIB = 1024 * 1024


def _click(api, key: str, point: tuple[int, int], data: bytes | None = None, image_id: str | None = None):
    query = f"points=[[{point[0]},{point[1]}]]" + (f"&image_id={image_id}" if image_id else "")
    files = {"file": ("photo.jpg", data, "image/jpeg")} if data is not None else None
    return requests.post(f"{api.url}{SEG}?{query}", files=files, headers=auth(key), timeout=120)


def test_clicks_by_handle_answer_as_the_upload_does(api, key, report):
    data = photo(7400)
    first = _click(api, key, (900, 500), data)
    assert first.status_code == 200, first.text
    image_id = first.json()["result"]["image_id"]
    by_handle = _click(api, key, (900, 500), image_id=image_id)
    assert by_handle.status_code == 200, by_handle.text
    timing = by_handle.headers["Server-Timing"]
    assert "decode" not in timing and "embeddings;desc=cached" in timing
    assert (
        fetch(by_handle.json()["result"]["output_url"]).content == fetch(first.json()["result"]["output_url"]).content
    )
    report(f"image handle: first click (upload) {first.headers['Server-Timing']}; by handle {timing}")


def test_an_evicted_image_is_encoded_again_from_the_kept_upload(exported_repo, tmp_path, tmp_path_factory):
    """A 20 MiB store holds two images: a third evicts the first, whose handle still answers, encoded again."""
    repo = repository_with_cache(exported_repo, tmp_path, 20 * MIB)
    opts = TritonOptions.on_free_ports(repo, tmp_path / "triton")
    with TritonServer(opts):
        api = start_api(tmp_path_factory, opts.grpc_url)
        try:
            _, key = api.create_key(100)
            first = _click(api, key, (700, 400), photo(7410))
            assert first.status_code == 200, first.text
            image_id = first.json()["result"]["image_id"]
            for seed in (7411, 7412):  # two more images: the first is evicted
                assert _click(api, key, (700, 400), photo(seed)).status_code == 200
            again = _click(api, key, (700, 400), image_id=image_id)
            assert again.status_code == 200, again.text
            assert "encode;" in again.headers["Server-Timing"]  # the kept upload went to the model tier again
            mask = fetch(again.json()["result"]["output_url"]).content
            assert mask == fetch(first.json()["result"]["output_url"]).content
            assert again.headers["X-Credits-Charged"] == "1"
        finally:
            api.stop()
