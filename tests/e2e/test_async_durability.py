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
from tests.plugins.processes import start_cli, wait_for_line

IMAGES = 8


def test_sigkill_after_202_resumes_the_batch_after_restart(triton_server, tmp_path, report):
    port = free_port()
    data = tmp_path / "d"
    args = ["frontend", "--triton-url", triton_server.opts.grpc_url, "--port", str(port), "--data-dir", str(data)]
    url = f"http://127.0.0.1:{port}"
    first = start_cli(args, tmp_path, tmp_path)
    try:
        wait_for_line(first, "maskserve is listening", timeout=60)
        create = ["keys", "create", "--name", "k", "--credits", "100", "--data-dir", str(data)]
        created = start_cli(create, tmp_path, tmp_path)
        out, _ = created.communicate(timeout=60)
        key = next(line.split()[-1] for line in out.splitlines() if line.startswith("api key:"))
        key_id = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("key id:"))
        files = [("files", (f"{i}.jpg", image_bytes(640, 480, seed=900 + i), "image/jpeg")) for i in range(IMAGES)]
        r = requests.post(
            f"{url}/v1/services/image-segmentation/batch",
            params={"points": "[[320, 240]]", "async": "true"},
            files=files,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert r.status_code == 202, r.text
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = time.monotonic()
    finally:
        if first.poll() is None:
            first.kill()
    accepted = r.json()
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
