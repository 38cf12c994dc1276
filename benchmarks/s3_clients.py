"""Choosing the S3 client: aiobotocore vs obstore, putting and getting the same objects side by side.

Both write then read N objects of one size to one bucket on a real S3 server
process (moto's standalone server), 8 at a time, alternating runs.

python -m benchmarks.s3_clients [--objects 50] [--mib 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

from maskserve.devtools.s3 import S3Server

BUCKET = "maskserve-clients"
Operation = Callable[[str, bytes | None], Awaitable[bytes | None]]


async def _timed(op: Operation, keys: list[str], data: bytes | None) -> float:
    slots = asyncio.Semaphore(8)

    async def one(key: str) -> None:
        async with slots:
            await op(key, data)

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys))
    return time.perf_counter() - started


async def measure(server: S3Server, objects: int, size: int, runs: int) -> dict[str, dict[str, list[float]]]:
    import obstore
    from aiobotocore.session import get_session
    from obstore.store import S3Store

    data = os.urandom(size)
    server.client().create_bucket(Bucket=BUCKET)
    session = get_session()
    results: dict[str, dict[str, list[float]]] = {}
    async with session.create_client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=server.ACCESS_KEY,
        aws_secret_access_key=server.SECRET_KEY,
    ) as botoclient:
        store = S3Store(
            BUCKET,
            endpoint=server.url,
            region="us-east-1",
            access_key_id=server.ACCESS_KEY,
            secret_access_key=server.SECRET_KEY,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

        async def boto_put(key: str, body: bytes | None) -> None:
            await botoclient.put_object(Bucket=BUCKET, Key=key, Body=body)

        async def boto_get(key: str, body: bytes | None) -> bytes:
            response = await botoclient.get_object(Bucket=BUCKET, Key=key)
            async with response["Body"] as stream:
                return bytes(await stream.read())

        async def obs_put(key: str, body: bytes | None) -> None:
            assert body is not None
            await obstore.put_async(store, key, body)

        async def obs_get(key: str, body: bytes | None) -> bytes:
            got = await obstore.get_async(store, key)
            return bytes(await got.bytes_async())

        clients = {"aiobotocore": (boto_put, boto_get), "obstore": (obs_put, obs_get)}
        for run in range(runs + 1):  # the first round warms both up
            for name, (put, get) in clients.items():
                keys = [f"{name}/{run}/{i}" for i in range(objects)]
                put_s = await _timed(put, keys, data)  # type: ignore[arg-type]
                get_s = await _timed(get, keys, None)
                if run:
                    row = results.setdefault(name, {"put_s": [], "get_s": []})
                    row["put_s"].append(put_s)
                    row["get_s"].append(get_s)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--mib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    server = S3Server().start()
    try:
        results = asyncio.run(measure(server, args.objects, int(args.mib * 2**20), args.runs))
    finally:
        server.stop()
    med = {n: {k: statistics.median(v) for k, v in row.items()} for n, row in results.items()}
    a, o = med["aiobotocore"], med["obstore"]
    print(f"{args.objects} objects of {args.mib} MiB, 8 at a time, median of {args.runs} runs:\n")
    print("| | aiobotocore | obstore | aiobotocore / obstore |\n| --- | --- | --- | --- |")
    for step in ("put_s", "get_s"):
        print(f"| {step[:3]} all | {a[step]:.2f} s | {o[step]:.2f} s | {a[step] / o[step]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
