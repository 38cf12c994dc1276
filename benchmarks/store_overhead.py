"""The store's cost per request: authenticate, reserve, complete and read back one job on SQLite.

python benchmarks/store_overhead.py [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from maskserve.frontend.adapters.store import SqlStore, database_url
from maskserve.frontend.domain.jobs import Completion, JobKind, NewJob


async def measure(requests: int) -> list[float]:
    store = SqlStore(database_url("", Path(tempfile.mkdtemp()) / "bench.db"))
    await store.open()
    key, secret = await store.create_key("bench", 10**9)
    times = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            await store.authenticate(secret)
            job = NewJob(uuid.uuid4().hex, JobKind.SEGMENTATION, "a.jpg", 100, 10, 10)
            await store.reserve_jobs(key.id, None, [job])
            await store.complete_job(job.id, Completion("/x", "image/png", 1, 1, 1, 1.0, time.time() + 60, "1"))
            await store.get_job(job.id)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
    return times[requests // 8 :]  # after warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    times = asyncio.run(measure(parser.parse_args().requests))
    p90 = sorted(times)[int(0.9 * len(times))]
    print(f"store per request: median {statistics.median(times):.2f} ms, p90 {p90:.2f} ms")


if __name__ == "__main__":
    main()
