"""Accepted asynchronous work is durable: a frontend killed with SIGKILL after its 202 finishes the work after
a restart (or fails it with a refund), never loses it and never charges it twice (API.md v1.1)."""

from __future__ import annotations

import signal
import sqlite3
import time

import requests

from maskserve.devtools.pictures import image_bytes
from maskserve.triton.server import free_port
from tests.plugins.calls import ledger_state
from tests.plugins.processes import create_key, start_cli, wait_for_line

IMAGES = 8


def _accept_then_kill(url: str, key: str, frontend, images: int, seed: int) -> tuple[dict, float]:
    """An async batch of ``images`` distinct JPEGs answered 202, then its frontend SIGKILLed at once;
    → the 202's body and when the kill ended the process."""
    files = [("files", (f"{i}.jpg", image_bytes(640, 480, seed=seed + i), "image/jpeg")) for i in range(images)]
    r = requests.post(
        f"{url}/v1/services/image-segmentation/batch",
        params={"points": "[[320, 240]]", "async": "true"},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert r.status_code == 202, r.text
    frontend.send_signal(signal.SIGKILL)
    frontend.wait(timeout=30)
    return r.json(), time.monotonic()


def test_sigkill_after_202_resumes_the_batch_after_restart(triton_server, tmp_path, report):
    port = free_port()
    data = tmp_path / "d"
    args = ["frontend", "--triton-url", triton_server.opts.grpc_url, "--port", str(port), "--data-dir", str(data)]
    url = f"http://127.0.0.1:{port}"
    first = start_cli(args, tmp_path, tmp_path)
    try:
        wait_for_line(first, "maskserve is listening", timeout=60)
        key, key_id = create_key(["--data-dir", str(data)], tmp_path, tmp_path)
        accepted, killed_at = _accept_then_kill(url, key, first, IMAGES, seed=900)
    finally:
        if first.poll() is None:
            first.kill()
    with sqlite3.connect(data / "maskserve.db") as db:
        done_before = db.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()[0]
        kept = db.execute("SELECT count(*) FROM deferred").fetchone()[0]
    assert kept == 1 and done_before < IMAGES  # the kill came while the work was under way
    second = start_cli(args, tmp_path, tmp_path)
    try:
        wait_for_line(second, "maskserve is listening", timeout=60)
        restarted_at = time.monotonic()
        while True:
            batch = requests.get(
                f"{url}/v1/batches/{accepted['batch_id']}", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ).json()
            if batch["status"] != "processing":
                break
            assert time.monotonic() - restarted_at < 300, batch
            time.sleep(0.5)
        finished_at = time.monotonic()
    finally:
        second.kill()
        second.wait(timeout=30)
    assert [j["job_id"] for j in batch["results"]] == [j["job_id"] for j in accepted["results"]]
    assert batch["completed"] == IMAGES, batch  # resumed: none lost, none failed
    state = ledger_state(data / "maskserve.db", key_id)
    assert state["charged"] == IMAGES and state["balance"] == 100 - IMAGES and state["ledger"] == 100 - IMAGES
    assert state["processing"] == 0
    with sqlite3.connect(data / "maskserve.db") as db:
        assert db.execute("SELECT count(*) FROM deferred").fetchone()[0] == 0
    assert not list((data / "files").glob("*_input.bin"))  # the kept inputs are gone once done
    report(
        f"async durability: {IMAGES}-image async batch, frontend SIGKILLed right after its 202 with "
        f"{done_before} done; after the restart the other {IMAGES - done_before} resumed and the batch completed "
        f"{finished_at - restarted_at:.1f} s after the new frontend listened ({restarted_at - killed_at:.1f} s to "
        f"restart); charged {IMAGES} credits once, ledger consistent, inputs deleted"
    )


TAKEOVER_IMAGES = 10


def test_another_frontend_takes_over_the_async_batch_of_one_sigkilled(triton_server, postgres_url, tmp_path, report):
    """Two frontends on one PostgreSQL: the one that accepted a 10-image async batch is SIGKILLed right after its
    202; the other claims the request once its lease runs out and completes every image, charged once."""
    import asyncio

    import asyncpg

    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        args = [
            "frontend",
            "--triton-url",
            triton_server.opts.grpc_url,
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / f"d{i}"),
            "--database-url",
            postgres_url,
        ]
        procs.append(start_cli(args, tmp_path, tmp_path))
    try:
        for proc in procs:
            wait_for_line(proc, "maskserve is listening", timeout=60)
        key, key_id = create_key(["--database-url", postgres_url], tmp_path, tmp_path)
        accepted, killed_at = _accept_then_kill(f"http://127.0.0.1:{ports[0]}", key, procs[0], TAKEOVER_IMAGES, 950)
        survivor = f"http://127.0.0.1:{ports[1]}"
        done_at_kill = None
        while True:
            batch = requests.get(
                f"{survivor}/v1/batches/{accepted['batch_id']}", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ).json()
            if done_at_kill is None:
                done_at_kill = batch["completed"]
            if batch["status"] != "processing":
                break
            assert time.monotonic() - killed_at < 300, batch
            time.sleep(0.5)
        finished_s = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert batch["completed"] == TAKEOVER_IMAGES, batch
    assert done_at_kill < TAKEOVER_IMAGES  # the kill came while the work was under way

    async def ledger() -> tuple[int, int, int, int]:
        conn = await asyncpg.connect(postgres_url)
        try:
            balance = await conn.fetchval("SELECT credits FROM api_keys WHERE id = $1", key_id)
            charged = await conn.fetchval("SELECT COALESCE(SUM(credits_used), 0) FROM jobs WHERE key_id = $1", key_id)
            processing = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'processing'")
            kept = await conn.fetchval("SELECT count(*) FROM deferred")
            return int(balance), int(charged), int(processing), int(kept)
        finally:
            await conn.close()

    balance, charged, processing, kept = asyncio.run(ledger())
    assert (balance, charged, processing, kept) == (100 - TAKEOVER_IMAGES, TAKEOVER_IMAGES, 0, 0)
    report(
        f"async takeover: {TAKEOVER_IMAGES}-image async batch on 2 frontends sharing PostgreSQL, the accepting one "
        f"SIGKILLed after its 202 with {done_at_kill} done; the other claimed its lease and completed all "
        f"{TAKEOVER_IMAGES} {finished_s:.1f} s after the kill; charged {charged} credits once, nothing processing"
    )


VIDEO_FRAMES = 12


def test_another_frontend_takes_over_the_propagation_of_one_sigkilled(triton_server, postgres_url, tmp_path, report):
    """Two frontends on one PostgreSQL (frames kept in the database): the one running a propagation is SIGKILLed
    mid-way; the other takes its lease over and completes it from its start, charged once (API.md v1.2)."""
    import asyncio

    import asyncpg

    from maskserve.devtools.pictures import clip_file, moving_shapes_clip

    clip = clip_file(moving_shapes_clip(tmp_path / "clip", VIDEO_FRAMES, 320, 240), "mp4")
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        args = ["frontend", "--triton-url", triton_server.opts.grpc_url, "--port", str(port),
                "--data-dir", str(tmp_path / f"d{i}"), "--database-url", postgres_url]  # fmt: skip
        procs.append(start_cli(args, tmp_path, tmp_path))
    try:
        for proc in procs:
            wait_for_line(proc, "maskserve is listening", timeout=60)
        key, key_id = create_key(["--database-url", postgres_url], tmp_path, tmp_path)
        auth = {"Authorization": f"Bearer {key}"}
        first, survivor = (f"http://127.0.0.1:{p}" for p in ports)
        r = requests.post(f"{first}/v1/videos", files={"file": ("c.mp4", clip)}, headers=auth, timeout=120)
        assert r.status_code == 201, r.text
        video_id = r.json()["video_id"]
        r = requests.post(
            f"{first}/v1/videos/{video_id}/prompts",
            params={"frame": 0, "object_id": 1, "points": "[[104, 100]]"},
            headers=auth,
            timeout=120,
        )
        assert r.status_code == 200, r.text
        r = requests.post(f"{first}/v1/videos/{video_id}/propagate", headers=auth, timeout=60)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        while requests.get(f"{first}/v1/jobs/{job_id}", headers=auth, timeout=30).json()["progress"]["frames_done"] < 2:
            time.sleep(0.2)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        killed_at = time.monotonic()
        while True:
            job = requests.get(f"{survivor}/v1/jobs/{job_id}", headers=auth, timeout=30).json()
            if job["status"] != "processing":
                break
            assert time.monotonic() - killed_at < 300, job
            time.sleep(0.5)
        finished_s = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert job["status"] == "completed" and job["credits_used"] == VIDEO_FRAMES, job
    assert job["progress"] == {"frames_done": VIDEO_FRAMES, "frames_total": VIDEO_FRAMES}

    async def ledger() -> tuple[int, int, int, int]:
        conn = await asyncpg.connect(postgres_url)
        try:
            balance = await conn.fetchval("SELECT credits FROM api_keys WHERE id = $1", key_id)
            charged = await conn.fetchval("SELECT COALESCE(SUM(credits_used), 0) FROM jobs WHERE key_id = $1", key_id)
            processing = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'processing'")
            active = await conn.fetchval("SELECT count(*) FROM propagations WHERE active")
            return int(balance), int(charged), int(processing), int(active)
        finally:
            await conn.close()

    balance, charged, processing, active = asyncio.run(ledger())
    assert (balance, charged, processing, active) == (100 - 1 - VIDEO_FRAMES, 1 + VIDEO_FRAMES, 0, 0)
    report(
        f"propagation takeover: {VIDEO_FRAMES}-frame propagation on 2 frontends sharing PostgreSQL, the running one "
        f"SIGKILLed after 2 frames; the other took its lease over and completed it {finished_s:.1f} s after the "
        f"kill; charged {charged} credits once (1 prompt + {VIDEO_FRAMES} frames), nothing processing"
    )
