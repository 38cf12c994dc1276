"""Zero-downtime model swaps: promote and roll back under continuous load."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import requests

from maskserve.core import signatures as sig
from maskserve.export.command import ExportRequest, run_export
from tests.helpers import Served, auth, image_bytes


def _models(served: Served, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskserve.cli",
            "models",
            "--triton-url",
            served.triton_url,
            "--data-dir",
            str(served.data),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_promote_and_rollback_under_load(exported_repo, tmp_path, report):
    repo = tmp_path / "repo"
    for model in sig.LIFECYCLE_MODELS:  # version 1 as exported for the session, version 2 with other weights
        shutil.copytree(exported_repo / model, repo / model)
    run_export(ExportRequest(out=repo, random_weights=True, seed=7, version=2))
    served = Served(repo, tmp_path, credits=100_000, env={"MASKSERVE_RATE_SINGLE": "100000"})
    stop = threading.Event()
    outcomes: list[tuple[float, int, str | None]] = []
    photo = image_bytes(320, 240, seed=9100)

    def load() -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            r = session.post(
                f"{served.url}/v1/services/image-segmentation?points={quote(f'[[{10 + i % 200},20]]')}",
                files={"file": ("p.jpg", photo)},
                headers=auth(served.key),
                timeout=120,
            )
            outcomes.append((time.monotonic(), r.status_code, r.json().get("job_id")))

    try:
        _models(served, "promote", "1", "--drain-seconds", "1")
        assert "active version: 1" in _models(served, "list").stdout
        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(3)
        _models(served, "promote", "2", "--drain-seconds", "3")
        switched = time.monotonic()
        time.sleep(3)
        ready = requests.get(f"{served.url}/readyz", timeout=10).json()
        assert {m["version"] for m in ready["models"]} == {"2"} and ready["models"][0]["weights"] == "random (seed 7)"
        _models(served, "promote", "1", "--drain-seconds", "3")  # rollback is the same command
        rolled_back = time.monotonic()
        time.sleep(3)
        stop.set()
        worker.join(120)
        assert {m["version"] for m in requests.get(f"{served.url}/readyz", timeout=10).json()["models"]} == {"1"}
        statuses = [s for _, s, _ in outcomes]
        assert statuses and set(statuses) == {200}, statuses
        with sqlite3.connect(served.data / "maskserve.db") as db:
            version_of = dict(db.execute("SELECT id, model_version FROM jobs").fetchall())
        during_2 = [version_of[j] for t, _, j in outcomes if switched + 1.5 < t < rolled_back - 3.5]
        after = [version_of[j] for t, _, j in outcomes if t > rolled_back + 1.5]
        assert during_2 and set(during_2) == {"2"}, during_2
        assert after and set(after) == {"1"}, after
        report(
            f"model swap: {len(statuses)} requests during promote 1->2 and rollback 2->1, all 200; "
            f"jobs after each switch recorded the new version"
        )
    finally:
        stop.set()
        assert served.stop() == 0
