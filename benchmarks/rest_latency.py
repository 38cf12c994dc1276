"""Latency of single REST requests, one at a time: a new image vs a cached one.

A "cold" request uploads a 1920x1080 JPEG the service has not seen (decode,
resize, encoder, decoder, upsample, PNG); a "cached" request uploads the same
bytes again with another point, so the encoder is skipped. Brings up the whole
embedded stack (random-weight SAM 2.1 tiny) unless --url/--key are given.

    python -m benchmarks.rest_latency --requests 7
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import requests
from PIL import Image


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((1920, 1080), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def measure(url: str, key: str, n: int) -> dict[str, list[float]]:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}

    def one(data: bytes, x: int) -> float:
        started = time.perf_counter()
        r = session.post(f"{url}/v1/services/image-segmentation?points=%5B%5B{x},540%5D%5D",
                         files={"file": ("p.jpg", data, "image/jpeg")}, headers=headers, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        r.raise_for_status()
        return elapsed

    one(photo(10_000), 100)  # warm-up: first calls compile and allocate
    cold, cached = [], []
    for i in range(n):
        data = photo(i)
        cold.append(one(data, 200 + i))
        cached.append(one(data, 900 + i))
    return {"cold": cold, "cached": cached}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.url:
        results = measure(args.url, args.key, args.requests)
    else:
        from benchmarks.stack import running_stack

        with running_stack() as (url, key, _):
            results = measure(url, key, args.requests)
    print(f"single segmentation requests, 1920x1080 JPEG, one point, concurrency 1, {args.requests} each (ms)")
    for name, times in results.items():
        print(f"  {name:7s} median {statistics.median(times):8.1f}  min {min(times):8.1f}  max {max(times):8.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), **results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
