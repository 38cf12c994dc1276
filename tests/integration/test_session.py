"""The session model: embeddings resident next to the graphs, through the real Triton and the real graphs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from urllib.parse import quote

import numpy as np
import pytest
import requests

from benchmarks.images import photo
from maskserve.core import signatures as sig
from maskserve.core.images import encoder_input
from maskserve.core.prompts import PackedPrompt, is_multimask, pack_prompt
from maskserve.export.repository import version_dir
from maskserve.frontend import imaging
from maskserve.session.engine import SessionEngine
from maskserve.session.store import EmbeddingStore
from tests.plugins.stack import encoder_runs, repository_with_cache, repository_with_session, start_api

SEG = "/v1/services/image-segmentation"
POINTS = ((480, 270), (960, 540), (1500, 800))  # the benchmark's prompts on its 1920x1080 photos
MIB = 1024 * 1024


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_fp16_storage_agrees_with_fp32(exported_repo, report):
    """Masks from embeddings kept in fp16 vs fp32, same graphs (ONNX Runtime, fp32), benchmark prompts."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    encoder = ort.InferenceSession(str(version_dir(exported_repo, sig.ENCODER_MODEL, 1) / "model.onnx"), options)
    decoder = ort.InferenceSession(str(version_dir(exported_repo, sig.DECODER_MODEL, 1) / "model.onnx"), options)
    names = [spec.name for spec in sig.ENCODER_OUTPUTS]

    async def encode(image):
        return encoder.run(names, {"image": image})

    async def decode(digest, entry, prompts):
        feeds = {name: np.asarray(a, np.float32) for name, a in zip(names, entry.arrays, strict=True)}
        feeds.update(
            point_coords=np.stack([p.point_coords for p in prompts]),
            point_labels=np.stack([p.point_labels for p in prompts]),
            mask_input=np.zeros((len(prompts), 1, 256, 256), np.float32),
            has_mask_input=np.zeros((len(prompts),), np.float32),
        )
        return decoder.run(["low_res_masks", "iou_predictions"], feeds)

    async def masks(storage: str, images: list[bytes]) -> list[np.ndarray]:
        engine = SessionEngine(EmbeddingStore(1 << 30, storage), encoder_input, encode, decode)
        out = []
        for data in images:
            digest = hashlib.sha256(data).hexdigest()
            for x, y in POINTS:
                points = imaging.to_model_frame(np.array([[x, y]], np.float32), 1920, 1080)
                coords, labels = pack_prompt(points, np.array([1]), None)
                outcome = await engine.segment(
                    digest, data, [PackedPrompt(coords, labels, None, is_multimask(points, None))]
                )
                out.append(imaging.mask_from_logits(outcome.logits[0], 1080, 1920) > 0)
        return out

    images = [photo(5000 + i) for i in range(2)]
    ious = [
        _iou(a, b) for a, b in zip(asyncio.run(masks("fp16", images)), asyncio.run(masks("fp32", images)), strict=True)
    ]
    report(f"session store: fp16 vs fp32 embeddings, binary-mask IoU min {min(ious):.4f} over {len(ious)} masks")
    assert min(ious) >= 0.99


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_two_frontends_encode_each_image_once_and_move_small_messages(triton_server, tmp_path_factory, report):
    """Two frontends alternate prompts on the same images: one encoder call per image, no embeddings on the wire."""
    frontends = [start_api(tmp_path_factory, triton_server.opts.grpc_url) for _ in range(2)]
    try:
        keys = [f.create_key(100)[1] for f in frontends]
        images = [photo(7100 + i) for i in range(3)]
        before = encoder_runs(triton_server.opts.grpc_url)
        sent_by_prompt = []
        for round_ in range(4):
            for i, data in enumerate(images):
                which = (round_ + i) % 2
                front = frontends[which]
                sent_before = _metric(
                    requests.get(f"{front.url}/metrics", timeout=10).text, "maskserve_model_tier_bytes_total"
                )
                r = requests.post(
                    f"{front.url}{SEG}?points={quote(json.dumps([[900 + 10 * round_, 500]]))}",
                    files={"file": ("p.jpg", data, "image/jpeg")},
                    headers={"Authorization": f"Bearer {keys[which]}"},
                    timeout=120,
                )
                assert r.status_code == 200, r.text
                moved = _metric(
                    requests.get(f"{front.url}/metrics", timeout=10).text, "maskserve_model_tier_bytes_total"
                )
                sent_by_prompt.append((round_, len(data), moved - sent_before))
        encodes = encoder_runs(triton_server.opts.grpc_url) - before
        new = [moved for round_, _, moved in sent_by_prompt if round_ == 0]
        cached = [moved for round_, _, moved in sent_by_prompt if round_ > 0]
        report(
            f"session: 2 frontends x 12 prompts on 3 images: {encodes} encoder calls; bytes frontend<->Triton per "
            f"new image {max(new) / MIB:.2f} MiB (files {max(s for _, s, _ in sent_by_prompt) / MIB:.2f} MiB), "
            f"per cached prompt {max(cached) / MIB:.3f} MiB"
        )
        assert encodes == len(images)
        assert max(cached) <= 1.5 * MIB
        assert all(moved <= size + 2 * MIB for round_, size, moved in sent_by_prompt if round_ == 0)
    finally:
        for front in frontends:
            front.stop()


def test_session_store_keeps_its_bound_and_reports_on_the_metrics_port(exported_repo, tmp_path, tmp_path_factory):
    """A 20 MiB store holds two fp16 images: the third evicts the least recently used, which is encoded again."""
    from maskserve.triton.server import TritonOptions, TritonServer

    repo = repository_with_cache(exported_repo, tmp_path, 20 * MIB)
    opts = TritonOptions.on_free_ports(repo, tmp_path / "triton")
    with TritonServer(opts):
        api = start_api(tmp_path_factory, opts.grpc_url)
        try:
            _, key = api.create_key(100)
            images = [photo(7200 + i) for i in range(3)]

            def prompt(data: bytes) -> None:
                r = requests.post(
                    f"{api.url}{SEG}?points=[[100,100]]",
                    files={"file": ("p.jpg", data, "image/jpeg")},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=120,
                )
                assert r.status_code == 200, r.text

            for data in images:
                prompt(data)
            prompt(images[0])  # evicted by the third: encoded again
            metrics = requests.get(f"http://127.0.0.1:{opts.metrics_port}/metrics", timeout=10).text
        finally:
            api.stop()
    assert _metric(metrics, "maskserve_session_cache_bytes{") <= 20 * MIB
    assert _metric(metrics, "maskserve_session_cache_entries{") == 2
    assert _metric(metrics, "maskserve_session_cache_evictions{") == 2
    assert _metric(metrics, "maskserve_session_encodes{") == 4
    assert _metric(metrics, "maskserve_session_cache_misses{") >= 4


def _rle_answers(api_url: str, key: str, images: list[bytes]) -> list[object]:
    """Each image's single point, two objects and a box, answered as RLE (the masks, bit for bit)."""
    queries = [
        "points=[[480,270]]",
        "objects=" + quote(json.dumps([{"points": [[480, 270]]}, {"box": [900, 400, 1400, 900]}])),
        "box=[100,100,800,600]",
    ]
    out = []
    for data in images:
        for query in queries:
            r = requests.post(
                f"{api_url}{SEG}?{query}&mask_format=rle",
                files={"file": ("p.jpg", data, "image/jpeg")},
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            result = r.json()["result"]
            out.append((result["mask"], [o["mask"] for o in result.get("objects", [])]))
    return out


def test_embeddings_held_as_device_tensors_through_dlpack_give_the_same_masks(
    exported_repo, api, key, tmp_path, tmp_path_factory, report
):
    """``embeddings_memory=device`` (the gpu target's path: a torch store, DLPack to and from the graphs) run on
    this machine's CPU: every mask equals the host store's, and the store keeps the images it encoded."""
    from maskserve.triton.server import TritonOptions, TritonServer

    images = [photo(7400 + i) for i in range(2)]
    host = _rle_answers(api.url, key, images)
    repo = repository_with_session(exported_repo, tmp_path, embeddings_memory="device")
    opts = TritonOptions.on_free_ports(repo, tmp_path / "triton")
    with TritonServer(opts):
        device_api = start_api(tmp_path_factory, opts.grpc_url)
        try:
            device = _rle_answers(device_api.url, device_api.create_key(100)[1], images)
            metrics = requests.get(f"http://127.0.0.1:{opts.metrics_port}/metrics", timeout=10).text
        finally:
            device_api.stop()
    assert device == host
    assert _metric(metrics, "maskserve_session_encodes{") == len(images)
    assert _metric(metrics, "maskserve_session_cache_entries{") == len(images)
    report(f"session store in device memory (torch via DLPack, on CPU here): {len(host)} answers equal to the host's")


@pytest.mark.parametrize("field", ["digest", "point_coords"])
def test_the_session_model_refuses_malformed_requests_without_failing_others(triton_server, field):
    """A request missing a required input gets an error; the model keeps serving."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.opts.grpc_url)
    results: list = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        inputs = []
        coords, labels = pack_prompt(np.array([[100.0, 100.0]]), np.array([1]), None)
        arrays = {
            "digest": (np.array([b"0" * 64], np.object_), "BYTES"),
            "point_coords": (coords, "FP32"),
            "point_labels": (labels, "INT32"),
            "multimask": (np.array([True]), "BOOL"),
        }
        for name, (array, dtype) in arrays.items():
            if name == field:
                continue
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer(sig.served_name(sig.SESSION_MODEL, 1), inputs, request_id="bad")
        for _ in range(100):
            if results:
                break
            import time

            time.sleep(0.1)
    finally:
        client.stop_stream()
        client.close()
    assert results and results[0][1] is not None
