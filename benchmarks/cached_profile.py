"""Where a cached prompt's time goes: the whole REST request, the model-tier call, the rendering.

python -m benchmarks.cached_profile [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time

import numpy as np
import requests

from benchmarks.images import photo
from benchmarks.stack import Stack, running_stack
from maskserve.core.prompts import PackedPrompt, pack_prompt
from maskserve.frontend import imaging
from maskserve.frontend.adapters.model_tier import ModelTier
from maskserve.frontend.metrics import Metrics


def rest_ms(stack: Stack, data: bytes, x: int) -> float:
    started = time.perf_counter()
    r = requests.post(
        f"{stack.url}/v1/services/image-segmentation",
        params={"points": json.dumps([[300 + x, 400]])},
        files={"file": ("p.jpg", data, "image/jpeg")},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=60,
    )
    r.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def tier_ms(grpc_url: str, data: bytes, count: int) -> tuple[list[float], np.ndarray]:
    tier = ModelTier([grpc_url], 60, Metrics())
    digest = hashlib.sha256(data).hexdigest()
    version = await tier.latest_ready_version()
    coords, labels = pack_prompt(np.array([[300.0, 400.0]]), np.array([1]), None)
    prompt = PackedPrompt(coords, labels, None, True)
    times = []

    async def image() -> bytes:
        return data

    try:
        for _ in range(count):
            started = time.perf_counter()
            answer = await tier.segment(digest, image, [prompt], version)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await tier.close()
    assert answer.logits is not None
    return times, answer.logits[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    count = parser.parse_args().requests
    data = photo(1)
    with running_stack() as stack:
        rest_ms(stack, data, 0)  # the image is held by the model tier from here on
        rest = [rest_ms(stack, data, i) for i in range(count)]
        tier, logits = asyncio.run(tier_ms(stack.grpc_url, data, count))
    upsample, png = [], []
    for _ in range(count):
        started = time.perf_counter()
        mask = imaging.mask_from_logits(logits, 1080, 1920)
        upsample.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        imaging.encode_mask_png(mask)
        png.append((time.perf_counter() - started) * 1000)
    print(
        f"cached prompt, 1920x1080 JPEG, medians: REST request {statistics.median(rest):.1f} ms; "
        f"model-tier call {statistics.median(tier):.1f} ms; upsample {statistics.median(upsample):.1f} ms; "
        f"PNG {statistics.median(png):.1f} ms"
    )


if __name__ == "__main__":
    main()
