"""Output files in PostgreSQL (``database``) versus an S3-compatible bucket (``s3``), side by side.

Two frontends as processes, one per backend, each on its own database of one
real PostgreSQL server; the ``s3`` one writes to a real S3 server process
(moto's standalone server: MinIO is not installable here). For each, batches
of 50 extractions with uploaded masks (decode, cut-out, PNG, store: no model
work, so storage is what differs) are timed end to end, and PostgreSQL's write
volume over the batch is read from ``pg_current_wal_lsn()``. Then the 50 links
are downloaded (the ``s3`` links through their 302 to the store).

python -m benchmarks.files_backends [--runs 3] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.images import photo
from benchmarks.stack import CLI, create_key, wait_until_up
from maskserve.devtools.pictures import png_mask
from maskserve.devtools.postgres import PostgresCluster
from maskserve.devtools.s3 import S3Server
from maskserve.triton.server import free_port

BATCH = 50


def _wal_lsn(url: str) -> int:
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(url)
        try:
            value = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            return int(value)
        finally:
            await conn.close()

    return asyncio.run(read())


def _frontend(work: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str]:
    full = {
        **os.environ,
        "MASKSERVE_RATE_BATCH": "100000",
        "MASKSERVE_RATE_READ": "100000",
        "MASKSERVE_RATE_SINGLE": "100000",
        **env,
    }
    key = create_key([], full)
    port = free_port()
    # no Triton: extraction with uploaded masks needs none, so liveness (not readiness) is waited for
    proc = subprocess.Popen(
        [
            *CLI,
            "frontend",
            "--port",
            str(port),
            "--data-dir",
            str(work / name),
            "--triton-url",
            f"127.0.0.1:{free_port()}",
        ],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{name}.log", "w"),  # noqa: SIM115 (the process keeps it)
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, f"{url}/healthz", work / f"{name}.log", timeout=60)
    return proc, url, key


def _batch(url: str, key: str, images: list[bytes], masks: list[bytes]) -> tuple[float, list[str]]:
    files = [("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)]
    files += [("masks", (f"{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    started = time.perf_counter()
    r = requests.post(
        f"{url}/v1/services/object-extraction/batch",
        params={"output_format": "png"},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    )
    wall = time.perf_counter() - started
    r.raise_for_status()
    body = r.json()
    assert body["completed"] == len(images), body
    return wall, [x["output_url"] for x in body["results"]]


def _download(urls: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    with requests.Session() as session:
        for url in urls:
            got = session.get(url, timeout=60)
            got.raise_for_status()
            total += len(got.content)
    return time.perf_counter() - started, total


def measure(runs: int, width: int, height: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="maskserve-files-bench-"))
    images = [photo(2000 + i, width, height) for i in range(BATCH)]
    masks = [png_mask(width, height, (width // 5, height // 6, 4 * width // 5, 5 * height // 6)) for _ in range(BATCH)]
    cluster = PostgresCluster().start()
    store = S3Server().start()
    results: dict[str, dict[str, list[float]]] = {}
    procs = []
    try:
        backends = {
            "database": {"MASKSERVE_FILES_BACKEND": "database"},
            "s3": {
                "MASKSERVE_FILES_BACKEND": "s3",
                "MASKSERVE_S3_ENDPOINT_URL": store.url,
                "MASKSERVE_S3_BUCKET": "maskserve-bench",
                "MASKSERVE_S3_ACCESS_KEY_ID": store.ACCESS_KEY,
                "MASKSERVE_S3_SECRET_ACCESS_KEY": store.SECRET_KEY,
            },
        }
        stacks = {}
        for name, env in backends.items():
            db = cluster.create_database(f"bench_{name}")
            proc, url, key = _frontend(work, name, {**env, "MASKSERVE_DATABASE_URL": db})
            procs.append(proc)
            stacks[name] = (url, key, db)
            _batch(url, key, images[:5], masks[:5])  # warm-up
        for _ in range(runs):
            for name, (url, key, db) in stacks.items():  # side by side, alternating
                before = _wal_lsn(db)
                wall, urls = _batch(url, key, images, masks)
                wal = _wal_lsn(db) - before
                down, size = _download(urls)
                row = results.setdefault(name, {"batch_s": [], "wal_bytes": [], "download_s": [], "output_bytes": []})
                row["batch_s"].append(wall)
                row["wal_bytes"].append(wal)
                row["download_s"].append(down)
                row["output_bytes"].append(size)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        store.stop()
        cluster.stop()
    return {"runs": runs, "size": f"{width}x{height}", "batch": BATCH, "results": results}


def _compare(database: float, s3: float) -> str:
    """How the s3 backend compares, as a person reads it."""
    return f"{database / s3:.2f}× faster" if s3 <= database else f"{s3 / database:.2f}× slower"


def report(measured: dict[str, object]) -> str:
    results = measured["results"]
    assert isinstance(results, dict)
    med = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in results.items()}
    db, s3 = med["database"], med["s3"]
    lines = [
        f"Batch of {measured['batch']} extractions ({measured['size']} JPEGs + masks, PNG cut-outs), "
        f"median of {measured['runs']} runs:",
        "",
        "| | `database` | `s3` | s3 vs database |",
        "| --- | --- | --- | --- |",
        f"| batch wall time | {db['batch_s']:.2f} s | {s3['batch_s']:.2f} s | "
        f"{_compare(db['batch_s'], s3['batch_s'])} |",
        f"| PostgreSQL WAL written | {db['wal_bytes'] / 2**20:.1f} MiB | {s3['wal_bytes'] / 2**20:.2f} MiB | "
        f"{db['wal_bytes'] / max(s3['wal_bytes'], 1):.0f}× less |",
        f"| downloading the 50 links | {db['download_s']:.2f} s | {s3['download_s']:.2f} s | "
        f"{_compare(db['download_s'], s3['download_s'])} |",
        f"| output bytes | {db['output_bytes'] / 2**20:.1f} MiB | {s3['output_bytes'] / 2**20:.1f} MiB | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the images")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/files_backends.json"))
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    measured = measure(args.runs, width, height)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(measured, indent=2))
    print(report(measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
