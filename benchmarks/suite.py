"""The benchmark suite: every performance target of the CPU serving path, measured
side by side with the PyTorch reference peer in one run.

    python -m benchmarks.suite                 # full run, ~12 minutes on 2 cores
    python -m benchmarks.suite --smoke         # seconds-scale version (run in CI)

Writes benchmarks/results/suite.json and prints a table: for each target our
figure, the reference's, their ratio and whether the target holds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks import everything, video
from benchmarks.images import photo, photos
from benchmarks.interactive import clicks
from benchmarks.loadgen import run_load
from benchmarks.reference import TorchPeer
from benchmarks.stack import Stack, metric, rss_mb, running_stack
from benchmarks.targets import table, targets
from maskserve.core.images import encoder_input

MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    model_images: int
    cached_requests: int
    concurrent_images: int
    batch_images: int
    memory_requests: int
    reference_images: int
    agreement_images: int
    everything_per_side: tuple[int, ...]
    video_frames: int = 12
    video_objects: tuple[int, ...] = (1, 4)


FULL = Sizes(
    model_images=6,
    cached_requests=60,
    concurrent_images=24,
    batch_images=50,
    memory_requests=1000,
    reference_images=4,
    agreement_images=3,
    everything_per_side=(16, 32),
)
SMOKE = Sizes(
    model_images=1,
    cached_requests=4,
    concurrent_images=2,
    batch_images=2,
    memory_requests=20,
    reference_images=1,
    agreement_images=1,
    everything_per_side=(4,),
    video_frames=3,
    video_objects=(1,),
)
CACHE_BYTES = 64 * MIB  # the session store: eight fp16 images; the memory run cycles more images than fit


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def encoder_rate(grpc_url: str, tensors: list[np.ndarray], concurrency: int) -> tuple[float, list[float]]:
    """Images/s through Triton with ``concurrency`` requests in flight, and each call's seconds.

    Each tensor is one request (its first axis the images it carries)."""
    from benchmarks.graphs import TritonClient

    client = TritonClient(grpc_url, 600, shm_slots=concurrency)
    try:
        await client.encode(tensors[0])  # warm
        queue = list(tensors)
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                tensor = queue.pop()
                started = time.perf_counter()
                await client.encode(tensor)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return sum(t.shape[0] for t in tensors) / (time.perf_counter() - started), latencies
    finally:
        await client.close()


def _post(stack: Stack, data: bytes, point: tuple[int, int]) -> requests.Response:
    """One segmentation through the REST API (raises on any status but 2xx)."""
    r = requests.post(
        f"{stack.url}/v1/services/image-segmentation",
        params={"points": json.dumps([list(point)])},
        files={"file": ("p.jpg", data, "image/jpeg")},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=300,
    )
    r.raise_for_status()
    return r


def _moved(stack: Stack) -> float:
    return metric(requests.get(f"{stack.url}/metrics", timeout=10).text, "maskserve_model_tier_bytes_total")


def wire_bytes(stack: Stack, data: bytes) -> dict:
    """Bytes between the frontend and Triton: the first prompt on a new image, then cached prompts."""
    before = _moved(stack)
    _post(stack, data, (300, 300))
    new = _moved(stack) - before
    before = _moved(stack)
    for i in range(5):
        _post(stack, data, (400 + 10 * i, 300))
    return {"file_bytes": len(data), "new_image_bytes": new, "cached_prompt_bytes": (_moved(stack) - before) / 5}


async def session_prompts(grpc_url: str, data: bytes, concurrency: int, count: int) -> dict:
    """Prompts/s through the session model on one cached image, ``concurrency`` in flight."""
    import hashlib

    from maskserve.core.prompts import PackedPrompt, pack_prompt
    from maskserve.frontend.adapters.model_tier import ModelTier
    from maskserve.frontend.metrics import Metrics

    tier = ModelTier([grpc_url], 600, Metrics())
    digest = hashlib.sha256(data).hexdigest()
    version = await tier.latest_ready_version()

    def prompt(i: int) -> PackedPrompt:
        coords, labels = pack_prompt(np.array([[300.0 + i % 50, 400.0]]), np.array([1]), None)
        return PackedPrompt(coords, labels, None, True)

    async def image() -> bytes:
        return data

    try:
        await tier.segment(digest, image, [prompt(0)], version)  # warm: the image is held from here on
        queue = list(range(count))
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                await tier.segment(digest, image, [prompt(i)], version)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"prompts_per_s": count / (time.perf_counter() - started), "p50_ms": statistics.median(latencies)}
    finally:
        await tier.close()


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def agreement(stack: Stack, peer: TorchPeer, count: int) -> dict:
    """Masks through our whole path (reduced precision where configured) vs fp32 PyTorch."""
    ious = []
    for i in range(count):
        data = photo(5000 + i)
        for point in ((480, 270), (960, 540), (1500, 800)):
            r = _post(stack, data, point)
            ours = (
                np.asarray(Image.open(io.BytesIO(requests.get(r.json()["result"]["output_url"], timeout=30).content)))
                > 127
            )
            theirs = np.asarray(Image.open(io.BytesIO(peer.segment(data, point)))) > 127
            ious.append(_mask_iou(ours, theirs))
    return {"min_iou": min(ious), "mean_iou": statistics.fmean(ious), "masks": len(ious)}


def run(sizes: Sizes) -> dict:
    from maskserve.frontend import imaging

    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "sizes": sizes.__dict__,
    }
    peer = TorchPeer()
    images = photos(sizes.model_images + sizes.concurrent_images + sizes.batch_images + 8)
    model_images = images[: sizes.model_images]
    concurrent_images = images[sizes.model_images : sizes.model_images + sizes.concurrent_images]
    batch_images = images[sizes.model_images + sizes.concurrent_images :][: sizes.batch_images]
    memory_images = images[-8:]
    tensors = [encoder_input(d, 10**8) for d in model_images]
    rgbs = [imaging.decode_image(d, 10**8).rgb for d in images[: sizes.reference_images]]

    # Reference peer first, while the stack is not running: fp32 PyTorch, 2 threads.
    peer.encode(rgbs[0])
    ref_encode = [_timed(lambda r=r: peer.encode(r)) for r in rgbs]
    cached = photo(1)
    peer.segment(cached, (100, 100))
    ref_cached = [
        _timed(lambda i=i: peer.segment(cached, (200 + i, 300))) * 1000
        for i in range(max(3, sizes.cached_requests // 4))
    ]
    ref_new = [_timed(lambda d=d: peer.segment(d, (960, 540))) for d in images[: sizes.reference_images]]
    ref_image_s = statistics.median(ref_new)

    with running_stack(session_cache_bytes=CACHE_BYTES) as stack:
        # T1: encoder images/s through Triton vs PyTorch fp32
        rate_1, lat_1 = asyncio.run(encoder_rate(stack.grpc_url, tensors, 1))
        encoder_single_s = statistics.median(lat_1)
        results["encoder"] = {
            "ours_images_per_s": rate_1,
            "reference_images_per_s": 1 / statistics.median(ref_encode),
            "ours_single_image_s": encoder_single_s,
            "reference_single_image_s": statistics.median(ref_encode),
        }
        results["encoder"]["ratio"] = (
            results["encoder"]["ours_images_per_s"] / results["encoder"]["reference_images_per_s"]
        )
        results["agreement"] = agreement(stack, peer, sizes.agreement_images)

        # T2: a cached image at c=1, uploaded with every click, and by its handle (one upload, then clicks);
        # the decoder graph's own compute in the same run; clicks by handle at c=8
        reference_p50 = statistics.median(ref_cached)
        results["cached_c1"] = clicks(stack, cached, "cached", sizes.cached_requests, 1)
        results["click_c1"] = clicks(stack, cached, "click", sizes.cached_requests, 1)
        results["click_c8"] = clicks(stack, cached, "click", sizes.cached_requests, 8)
        for name in ("cached_c1", "click_c1"):
            results[name]["reference_p50_ms"] = reference_p50
            results[name]["ratio"] = reference_p50 / results[name]["ours_p50_ms"]
        results["click_c8"]["reference_prompts_per_s"] = 1000 / reference_p50
        results["click_c8"]["ratio"] = results["click_c8"]["prompts_per_s"] * reference_p50 / 1000

        # T2b: what crosses the frontend-Triton boundary, and the session model alone at concurrency 8
        results["wire"] = wire_bytes(stack, photo(4242))
        results["prompts_c8"] = asyncio.run(session_prompts(stack.grpc_url, cached, 8, sizes.cached_requests))
        results["prompts_c8"]["reference_prompts_per_s"] = 1000 / reference_p50
        results["prompts_c8"]["ratio"] = (
            results["prompts_c8"]["prompts_per_s"] / results["prompts_c8"]["reference_prompts_per_s"]
        )

        # T3: concurrency 8, distinct images, vs encoder-only at the same concurrency
        enc_tensors = [encoder_input(d, 10**8) for d in concurrent_images[: max(2, sizes.concurrent_images // 2)]]
        rate_8, _ = asyncio.run(encoder_rate(stack.grpc_url, enc_tensors, 8))
        rest = asyncio.run(
            run_load(stack.url, stack.key, ["new"] * sizes.concurrent_images, 8, None, list(concurrent_images), cached)
        )
        results["concurrent_c8"] = {
            "rest_images_per_s": rest["images_per_s"],
            "encoder_only_images_per_s": rate_8,
            "overhead_ratio": rest["images_per_s"] / rate_8,
            "errors": rest["errors_by_status"],
            "event_loop_lag_p99_le_s": rest["event_loop_lag"]["p99_le_s"],
            "reference_images_per_s": 1 / ref_image_s,
            "p50_ms": rest["latency_ms"]["new"]["p50"],
        }
        results["concurrent_c8"]["ratio_vs_reference"] = rest["images_per_s"] * ref_image_s

        # T4: one batch of distinct images vs the single-image encoder time of this run
        files = [("files", (f"b{i}.jpg", d, "image/jpeg")) for i, d in enumerate(batch_images)]
        started = time.perf_counter()
        r = requests.post(
            f"{stack.url}/v1/services/image-segmentation/batch",
            params={"points": "[[960,540]]"},
            files=files,
            headers={"Authorization": f"Bearer {stack.key}"},
            timeout=1800,
        )
        wall = time.perf_counter() - started
        body = r.json()
        results["batch"] = {
            "images": len(batch_images),
            "wall_s": wall,
            "completed": body.get("completed"),
            "bound_s": len(batch_images) * encoder_single_s,
            "ratio_to_bound": wall / (len(batch_images) * encoder_single_s),
            "reference_wall_s": len(batch_images) * ref_image_s,
        }

        # T5: frontend memory over many requests after warm-up; the cache stays in its bound
        warm = asyncio.run(run_load(stack.url, stack.key, ["cached"] * 10, 2, None, [], cached))
        del warm
        rss_before = rss_mb(stack.frontend_pid)
        kinds = []
        pool = list(memory_images)
        for i in range(sizes.memory_requests):
            kinds.append("new" if i % 50 == 0 else "cached")
        news = (pool * (kinds.count("new") // len(pool) + 1))[: kinds.count("new")]
        mem = asyncio.run(run_load(stack.url, stack.key, kinds, 2, None, news, cached))
        rss_after = rss_mb(stack.frontend_pid)
        triton_metrics = requests.get(stack.triton_metrics_url, timeout=10).text
        cache_bytes = metric(triton_metrics, "maskserve_session_cache_bytes{")
        entries = metric(triton_metrics, "maskserve_session_cache_entries{")
        results["memory"] = {
            "requests": sizes.memory_requests,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "growth_mb": rss_after - rss_before,
            "cache_bytes": cache_bytes,
            "cache_limit_bytes": CACHE_BYTES,
            "images_per_gib": (2**30) / (cache_bytes / entries) if entries else 0.0,
            "errors": mem["errors_by_status"],
        }

        # T6: segment-everything per image (encoder included) vs Meta's SAM2AutomaticMaskGenerator
        results["everything"] = everything.measure(stack.url, stack.key, peer.model, sizes.everything_per_side, 1)
        results["video"] = video.measure(stack, sizes.video_frames, sizes.video_objects)
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the suite runs, not the targets")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/suite.json"))
    args = parser.parse_args(argv)
    results = run(SMOKE if args.smoke else FULL)
    results["smoke"] = args.smoke
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
