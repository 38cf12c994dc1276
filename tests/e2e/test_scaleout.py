"""Two frontend processes on one PostgreSQL: exact billing and one rate limit between them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from urllib.parse import quote

import aiohttp
import asyncpg
import requests

from maskserve.devtools.pictures import image_bytes
from maskserve.triton.server import free_port

CLI = [sys.executable, "-m", "maskserve.cli"]


def _frontend(triton_url: str, database_url: str, data_dir, tmp_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "frontend",
            "--triton-url",
            triton_url,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--database-url",
            database_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"frontend-{port}.log", "w"),  # noqa: SIM115 (the process keeps it)
        env={**os.environ, "HOME": str(tmp_path)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError((tmp_path / f"frontend-{port}.log").read_text()[-3000:])


def test_two_frontends_share_one_postgresql(triton_server, postgres_url, tmp_path, report):
    shared = tmp_path / "admin"  # each frontend below has its own data directory: nothing local is shared
    created = subprocess.run(
        [
            *CLI,
            "keys",
            "create",
            "--name",
            "two",
            "--credits",
            "10",
            "--database-url",
            postgres_url,
            "--data-dir",
            str(shared),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("api key:"))
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key id:"))
    frontends = [
        _frontend(triton_server.opts.grpc_url, postgres_url, tmp_path / f"host{i}", tmp_path) for i in range(2)
    ]
    photo = image_bytes(320, 240, seed=8800)
    try:
        urls = [url for _, url in frontends]
        requests.post(
            f"{urls[0]}/v1/services/image-segmentation?points={quote('[[5,5]]')}",
            files={"file": ("w.jpg", photo)},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ).raise_for_status()  # 1 credit, warms one cache

        async def storm():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

                async def one(i: int):
                    form = aiohttp.FormData()
                    form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
                    async with session.post(
                        f"{urls[i % 2]}/v1/services/image-segmentation?points={quote(json.dumps([[10 + i, 10]]))}",
                        data=form,
                        headers={"Authorization": f"Bearer {key}"},
                    ) as r:
                        return r.status, await r.json()

                return await asyncio.gather(*(one(i) for i in range(30)))

        results = asyncio.run(storm())
        statuses = sorted(s for s, _ in results)
        assert statuses.count(200) == 9 and statuses.count(402) == 21, statuses

        # a link signed by one frontend is served by the other: one secret, files in PostgreSQL
        body = next(b for s, b in results if s == 200)
        link = (
            body["result"]["output_url"].replace(urls[0], urls[1])
            if urls[0] in body["result"]["output_url"]
            else body["result"]["output_url"].replace(urls[1], urls[0])
        )
        assert requests.get(link, timeout=30).status_code == 200

        async def books():
            conn = await asyncpg.connect(postgres_url)
            try:
                return (
                    await conn.fetchval("SELECT credits FROM api_keys WHERE id = $1", key_id),
                    await conn.fetchval("SELECT SUM(delta) FROM ledger WHERE key_id = $1", key_id),
                    await conn.fetchval("SELECT SUM(credits_used) FROM jobs WHERE key_id = $1", key_id),
                    await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status = 'processing'"),
                )
            finally:
                await conn.close()

        balance, ledger, charged, processing = asyncio.run(books())
        assert (balance, ledger, charged, processing) == (0, 0, 10, 0)
        report(
            "scale-out: 2 frontends, 1 PostgreSQL, 30 concurrent requests on 9 credits: 9 x 200, 21 x 402, "
            "charged 10 in all, balance 0, ledger 0"
        )

        # one batch-rate window (30/min) shared by both frontends
        codes = [
            requests.post(
                f"{urls[i % 2]}/v1/services/image-segmentation/batch",
                files={"x": ("a", b"a")},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ).status_code
            for i in range(31)
        ]
        assert codes[:30] == [400] * 30 and codes[30] == 429
    finally:
        for proc, _ in frontends:
            proc.terminate()
            proc.wait(60)
