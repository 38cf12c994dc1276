"""Async load generator against the REST API.

Closed loop at a fixed concurrency (or open loop at a request rate), mixing
requests on new images (encoder + decoder), on a cached image uploaded again
(``cached``) or named by its handle (``click``: what an interactive client
sends after its first upload), and batch requests. Reports throughput,
p50/p95/p99 latency per kind, the median of each ``Server-Timing`` stage per
kind, errors by status, and the frontend's event-loop lag from its /metrics.

    python -m benchmarks.loadgen --concurrency 8 --requests 40 --mix new=1
    python -m benchmarks.loadgen --url http://127.0.0.1:8080 --key sk-live-... --concurrency 4 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import requests

from benchmarks.images import photo, photos

SEG = "/v1/services/image-segmentation"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class LoadResult:
    wall_s: float = 0.0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    images: int = 0
    lag: dict[str, float] = field(default_factory=dict)
    stages: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def summary(self) -> dict:
        total = sum(self.statuses.values())
        errors = {str(k): v for k, v in self.statuses.items() if k != 200}
        return {
            "wall_s": self.wall_s,
            "requests": total,
            "requests_per_s": total / self.wall_s if self.wall_s else 0.0,
            "images_per_s": self.images / self.wall_s if self.wall_s else 0.0,
            "errors_by_status": errors,
            "error_rate": sum(errors.values()) / total if total else 0.0,
            "latency_ms": {
                kind: {
                    "p50": percentile(v, 50),
                    "p95": percentile(v, 95),
                    "p99": percentile(v, 99),
                    "mean": statistics.fmean(v),
                    "n": len(v),
                }
                for kind, v in self.latencies_ms.items()
                if v
            },
            "event_loop_lag": self.lag,
            "stages_ms": {kind: stage_medians(v) for kind, v in self.stages.items() if v},
        }


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing`` → stage → milliseconds (stages with a note only are left out)."""
    found = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        for param in params:
            if param.startswith("dur="):
                found[name] = float(param[4:])
    return found


def stage_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    names = {name for sample in samples for name in sample}
    return {name: statistics.median(s.get(name, 0.0) for s in samples) for name in sorted(names)}


def parse_lag(text: str) -> tuple[dict[float, float], float, float]:
    """Cumulative histogram buckets, count and max of the frontend's loop lag."""
    buckets, count, worst = {}, 0.0, 0.0
    for line in text.splitlines():
        if line.startswith("maskserve_event_loop_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("maskserve_event_loop_lag_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("maskserve_event_loop_lag_max_seconds"):
            worst = float(line.rsplit(" ", 1)[1])
    return buckets, count, worst


def lag_between(before: str, after: str) -> dict[str, float]:
    """p99 upper bound (the smallest bucket holding 99 % of the run's samples) and the max."""
    b0, c0, _ = parse_lag(before)
    b1, c1, worst = parse_lag(after)
    n = c1 - c0
    p99 = float("nan")
    for le in sorted(b1):
        if n > 0 and (b1[le] - b0.get(le, 0.0)) / n >= 0.99:
            p99 = le
            break
    return {"samples": n, "p99_le_s": p99, "max_s_since_start": worst}


class Load:
    def __init__(self, url: str, key: str, new_images: list[bytes], cached_image: bytes, batch_size: int) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.new_images = list(new_images)
        self.cached_image = cached_image
        self.batch_size = batch_size
        self.result = LoadResult()
        self._rng = random.Random(0)
        self.image_id: str | None = None  # the cached image's handle, from the warm-up upload

    async def warm(self, session: aiohttp.ClientSession) -> None:
        await self._single(session, self.cached_image, record=False)

    def _next_new(self) -> bytes:
        if not self.new_images:
            raise RuntimeError("ran out of distinct images: generate more")
        return self.new_images.pop()

    async def _single(
        self, session: aiohttp.ClientSession, data: bytes | None, record: bool = True, kind: str = "cached"
    ) -> None:
        """One segmentation: ``data`` uploaded, or (None) the cached image by its handle."""
        params = {"points": f"[[{self._rng.randint(10, 1900)},{self._rng.randint(10, 1070)}]]"}
        form = None
        if data is not None:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="photo.jpg", content_type="image/jpeg")
        else:
            params["image_id"] = self.image_id or ""
        started = time.perf_counter()
        async with session.post(f"{self.url}{SEG}", params=params, data=form, headers=self.headers) as r:
            body = await r.json()
            status = r.status
            timing = r.headers.get("Server-Timing", "")
        if data is self.cached_image and status == 200:
            self.image_id = body["result"].get("image_id")
        if record:
            self.result.latencies_ms.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
            self.result.stages.setdefault(kind, []).append(server_timing(timing))
            self.result.statuses[status] += 1
            self.result.images += 1 if status == 200 else 0

    async def _batch(self, session: aiohttp.ClientSession) -> None:
        form = aiohttp.FormData()
        for _ in range(self.batch_size):
            form.add_field("files", self._next_new(), filename="photo.jpg", content_type="image/jpeg")
        started = time.perf_counter()
        async with session.post(
            f"{self.url}{SEG}/batch", params={"points": "[[960,540]]"}, data=form, headers=self.headers
        ) as r:
            body = await r.json()
            status = r.status
        self.result.latencies_ms.setdefault("batch", []).append((time.perf_counter() - started) * 1000)
        self.result.statuses[status] += 1
        if status == 200:
            self.result.images += body["completed"]

    async def one(self, session: aiohttp.ClientSession, kind: str) -> None:
        try:
            if kind == "new":
                await self._single(session, self._next_new(), kind="new")
            elif kind == "cached":
                await self._single(session, self.cached_image, kind="cached")
            elif kind == "click":
                await self._single(session, None, kind="click")
            else:
                await self._batch(session)
        except aiohttp.ClientError:
            self.result.statuses["connection-error"] += 1


async def run_load(
    url: str,
    key: str,
    kinds: list[str],
    concurrency: int,
    rate: float | None,
    new_images: list[bytes],
    cached_image: bytes,
    batch_size: int = 4,
) -> dict:
    load = Load(url, key, new_images, cached_image, batch_size)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await load.warm(session)
        before = requests.get(f"{url}/metrics", timeout=10).text
        started = time.perf_counter()
        queue = list(kinds)
        if rate:  # open loop: start requests on a schedule, whatever is in flight
            tasks = []
            for i, kind in enumerate(queue):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(load.one(session, kind)))
            await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while queue:
                    await load.one(session, queue.pop(0))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        load.result.wall_s = time.perf_counter() - started
        after = requests.get(f"{url}/metrics", timeout=10).text
    load.result.lag = lag_between(before, after)
    return load.result.summary()


def plan(requests_: int, mix: dict[str, float]) -> list[str]:
    """The kinds in proportion to their weights, evenly interleaved (deterministic)."""
    total = sum(mix.values())
    assigned = Counter()
    kinds = []
    for i in range(requests_):
        kind = max(mix, key=lambda k: mix[k] / total * (i + 1) - assigned[k])
        assigned[kind] += 1
        kinds.append(kind)
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running maskserve (default: start the embedded stack)")
    parser.add_argument("--key")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, help="requests per second (open loop) instead of a concurrency")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument(
        "--mix", default="new=1,cached=3,batch=0.2", help="relative weights of new, cached, click, batch"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    kinds = plan(args.requests, mix)
    needed = kinds.count("new") + kinds.count("batch") * args.batch_size
    images = photos(needed)
    cached = photo(1)

    def go(url: str, key: str) -> dict:
        return asyncio.run(run_load(url, key, kinds, args.concurrency, args.rate, images, cached, args.batch_size))

    if args.url:
        summary = go(args.url, args.key)
    else:
        from benchmarks.stack import running_stack

        with running_stack() as stack:
            summary = go(stack.url, stack.key)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
