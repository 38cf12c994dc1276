"""Soak: the load generator against the embedded stack for a long time, watching
errors and the frontend's memory.

    python -m benchmarks.soak --minutes 30 --json benchmarks/results/soak.json

Rounds of mixed requests (new images, cached images, small batches) at a fixed
concurrency; after each round it records the frontend's RSS, the embedding
cache's bytes and any non-200 statuses. Memory is "flat" when the last
quarter's median RSS is within 50 MB of the second quarter's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

import requests

from benchmarks.images import photo, photos
from benchmarks.loadgen import plan, run_load
from benchmarks.stack import metric, rss_mb, running_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--round", type=int, default=24, help="requests per round")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    mix = {"new": 1, "cached": 6, "batch": 0.25}
    kinds = plan(args.round, mix)
    per_round = kinds.count("new") + 2 * kinds.count("batch")
    cached = photo(1)
    rounds, statuses = [], Counter()
    with running_stack(session_cache_bytes=128 * 1024 * 1024) as stack:
        deadline = time.monotonic() + 60 * args.minutes
        seed = 20_000
        while time.monotonic() < deadline:
            images = photos(per_round, first_seed=seed)
            seed += per_round
            summary = asyncio.run(run_load(stack.url, stack.key, kinds, args.concurrency, None, images, cached, 2))
            statuses.update(summary["errors_by_status"])
            cache = metric(requests.get(stack.triton_metrics_url, timeout=10).text, "maskserve_session_cache_bytes{")
            rounds.append(
                {
                    "t_s": round(time.monotonic() - deadline + 60 * args.minutes),
                    "rss_mb": rss_mb(stack.frontend_pid),
                    "cache_mb": cache / 2**20,
                    "errors": summary["errors_by_status"],
                    "images_per_s": summary["images_per_s"],
                    "lag_p99_le_s": summary["event_loop_lag"]["p99_le_s"],
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
    q = max(1, len(rounds) // 4)
    second = statistics.median(r["rss_mb"] for r in rounds[q : 2 * q])
    last = statistics.median(r["rss_mb"] for r in rounds[-q:])
    result = {
        "minutes": args.minutes,
        "rounds": len(rounds),
        "requests": len(rounds) * args.round,
        "errors_by_status": dict(statuses),
        "rss_second_quarter_mb": second,
        "rss_last_quarter_mb": last,
        "rss_max_mb": max(r["rss_mb"] for r in rounds),
        "cache_max_mb": max(r["cache_mb"] for r in rounds),
        "flat": abs(last - second) < 50,
        "samples": rounds,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if not statuses and result["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
