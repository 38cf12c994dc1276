"""Releasing a model version as an operator does: the runbook in docs/DEPLOYMENT.md, run as written, under load.

One `maskserve serve` starts with version 1 only. Three clients run throughout:
an unpinned one cycling through a pool of images (so they are cached), an
unpinned one sending a new image every time (each encodes, so requests stay
in flight for a while: what a drain must wait for), and a key pinned to
version 1. The runbook exports version 2 (other seed, another store bound)
next to the running version, loads it, shadows it, canaries it, promotes it
and rolls back. Then a version exported with version 1's weights is shadowed
(IoU 1.0) and unloaded (its store freed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from maskserve.core import signatures as sig
from maskserve.devtools.pictures import image_bytes
from maskserve.frontend.domain.models import traffic_bucket
from tests.plugins.calls import auth
from tests.plugins.load import ClientThreads
from tests.plugins.stack import ROOT, SEED, Served

RUNBOOK_MARK = "<!-- runbook: release -->"
CANARY_PERCENT = 20


def runbook_commands() -> list[str]:
    """The commands of the release runbook in docs/DEPLOYMENT.md, in order (comments dropped)."""
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    block = text.split(RUNBOOK_MARK, 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Outcome:
    at: float  # when the request was sent
    client: str
    status: int
    job_id: str | None
    header: str | None
    digest: str


def _pool(canary: int, stable: int) -> list[bytes]:
    """Images of which ``canary`` fall in a 20 % canary by their hash and ``stable`` do not."""
    inside: list[bytes] = []
    outside: list[bytes] = []
    seed = 7000
    while len(inside) < canary or len(outside) < stable:
        photo = image_bytes(320, 240, seed=seed)
        side = inside if traffic_bucket(hashlib.sha256(photo).hexdigest()) < CANARY_PERCENT else outside
        if len(side) < (canary if side is inside else stable):
            side.append(photo)
        seed += 1
    mixed = []
    for k, photo in enumerate(outside):  # spread the canary's images through the cycle
        mixed.append(photo)
        if k % 2 == 0 and k // 2 < canary:
            mixed.append(inside[k // 2])
    return mixed


class Load(ClientThreads):
    """The three clients, each in its own thread, recording every answer."""

    def __init__(self, served: Served, pinned_key: str) -> None:
        self.served = served
        self.keys = {"pool": served.key, "fresh": served.key, "pinned": pinned_key}
        self.pool = _pool(canary=5, stable=11)
        self.outcomes: list[Outcome] = []
        super().__init__(self.keys)

    def _client(self, name: str) -> None:
        session = requests.Session()
        i = 0
        while not self.stop.is_set():
            i += 1
            sent = time.monotonic()
            if name == "fresh":  # a new image every second or so: each one encodes, and stays in flight a while
                self.stop.wait(1.0)
                photo = image_bytes(320, 240, seed=900_000 + i)
            else:
                photo = self.pool[(i + (3 if name == "pinned" else 0)) % len(self.pool)]
            r = session.post(
                f"{self.served.url}/v1/services/image-segmentation?points={quote(f'[[{40 + i % 200},60]]')}",
                files={"file": ("p.jpg", photo)},
                headers=auth(self.keys[name]),
                timeout=180,
            )
            job = r.json().get("job_id") if r.headers.get("content-type", "").startswith("application/json") else None
            digest = hashlib.sha256(photo).hexdigest()
            self.outcomes.append(Outcome(sent, name, r.status_code, job, r.headers.get("X-Model-Version"), digest))

    def between(self, start: float, end: float, client: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if start < o.at < end and (client is None or o.client == client)]


def _session_metric(served: Served, name: str, version: str) -> float | None:
    text = requests.get(f"http://127.0.0.1:{served.triton_metrics_port}/metrics", timeout=10).text
    found = re.search(rf'^maskserve_session_{name}{{[^}}]*version="{version}"[^}}]*}} (\S+)$', text, re.M)
    return None if found is None else float(found.group(1))


def _session_stubs(repo: Path, version: str) -> int:
    """Python-backend stub processes of ``sam2_session`` ``version`` (each holds that version's embeddings)."""
    out = subprocess.run(["pgrep", "-fa", "triton_python_backend_stub"], capture_output=True, text=True).stdout
    path = f"{repo.resolve()}/{sig.served_name(sig.SESSION_MODEL, version)}/{sig.TRITON_VERSION}/model.py"
    return sum(path in line for line in out.splitlines())


def _version(header: str | None) -> str | None:
    return None if header is None else header.rsplit("/", 1)[-1]


@pytest.mark.timeout(1500)
def test_release_runbook_under_load(exported_repo, tmp_path, report):
    repo = tmp_path / "repo"
    for model in sig.LIFECYCLE_MODELS:  # version 1 only, as exported for the session (seed SEED)
        shutil.copytree(exported_repo / sig.served_name(model, 1), repo / sig.served_name(model, 1))
    served = Served(repo, tmp_path, credits=1_000_000, env={"MASKSERVE_RATE_SINGLE": "100000"})
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MASKSERVE_TRITON_URL": served.triton_url,
        "MASKSERVE_MODEL_REPOSITORY": str(repo),
        "MASKSERVE_DATA_DIR": str(served.data),
        "WEIGHTS": "--random-weights --seed 9191 --session-cache-mib 256",
        # the shadow window: a candidate's comparison encodes the image again beside the load (about 8 s on a
        # 2-core CPU without bf16), and the report must have seen a few
        "WATCH_SECONDS": "45",
    }

    def sh(command: str, stdout_only: bool = False) -> tuple[float, float, str]:
        started = time.monotonic()
        proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600)
        print(f"$ {command}\n{proc.stdout}{proc.stderr}")  # shown when the test fails
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        return started, time.monotonic(), proc.stdout if stdout_only else proc.stdout + proc.stderr

    created = sh("maskserve keys create --name pinned --credits 100000")[2]
    pinned_key = re.search(r"api key: (\S+)", created).group(1)
    pinned_id = re.search(r"key id:\s+(\S+)", created).group(1)
    sh(f"maskserve keys pin {pinned_id} 1")
    steps: list[tuple[str, float, float, str]] = []
    promoted: dict[str, object] = {}

    def step(prefix: str, nth: int = 0) -> tuple[float, float, str]:
        """(start, end, output) of the nth runbook command that starts with ``prefix``."""
        found = [(s, e, out) for c, s, e, out in steps if c.startswith(prefix)]
        return found[nth]

    try:
        with Load(served, pinned_key) as load:
            time.sleep(4)
            for command in runbook_commands():
                steps.append((command, *sh(command)))
                if command.startswith("maskserve models promote 2"):  # while version 2 serves, as users see it
                    time.sleep(6)
                    promoted["ready"] = requests.get(f"{served.url}/readyz", timeout=10).json()
                    promoted["limits"] = {v: _session_metric(served, "cache_limit_bytes", v) for v in ("1", "2")}
            # the same weights as version 1, exported as version 3: the shadow comparison must agree exactly
            sh(f"maskserve export --random-weights --seed {SEED} --out {shlex.quote(str(repo))} --version 3")
            same_start, _, _ = sh(f"maskserve models canary 3 --percent {CANARY_PERCENT * 5} --shadow")
            deadline = time.monotonic() + 90  # until version 3 has been compared (an encode or two per comparison)
            while True:
                time.sleep(5)
                same = json.loads(sh("maskserve models report --json", stdout_only=True)[2])
                if same.get("shadow", {}).get("3", {}).get("compared", 0) > 0 or time.monotonic() > deadline:
                    break
            sh("maskserve models canary --off")
            assert _session_stubs(repo, "3") == 1 and _session_metric(served, "cache_bytes", "3") > 0
            unloaded = sh("maskserve models unload 3 --drain-seconds 60")[2]
            time.sleep(1)
        outcomes = load.outcomes

        # 0 failed requests through the whole cycle
        failed = [o for o in outcomes if o.status != 200]
        assert outcomes and not failed, failed[:5]

        # the new export's own configuration was loaded (not version 1's): provenance and store bound,
        # while version 1 (kept for the pinned key) kept its own
        ready = promoted["ready"]
        assert {m["version"] for m in ready["models"]} == {"2"}, ready
        assert {m["weights"] for m in ready["models"]} == {"random (seed 9191)"}, ready
        assert promoted["limits"] == {"1": float(1 << 30), "2": float(256 << 20)}, promoted["limits"]
        assert "version 1 stays loaded" in step("maskserve models promote 2")[2]
        assert _session_stubs(repo, "2") == 0  # rolled back: version 2 unloaded, its process and store gone
        ready = requests.get(f"{served.url}/readyz", timeout=10).json()
        assert {m["version"] for m in ready["models"]} == {"1"}

        # shadow: responses from version 1 only, IoU recorded, well below 1 for other weights
        shadow_start, shadow_end = step("maskserve models canary 2 --percent 20 --shadow")[1], step("sleep")[1]
        shadowed = load.between(shadow_start + 1, shadow_end)
        assert shadowed and {_version(o.header) for o in shadowed if o.client != "pinned"} == {"1"}
        shadow_report = step("maskserve models report")[2]
        iou = re.search(r"shadow: version 2 against 1: (\d+) compared, (\d+) errors, IoU mean (\S+),", shadow_report)
        assert iou and int(iou.group(1)) >= 2 and int(iou.group(2)) == 0, shadow_report
        assert float(iou.group(3)) < 0.9, shadow_report

        # live canary: exactly the images whose hash falls under 20 % went to version 2
        canary_start, canary_end = (
            step("maskserve models canary 2 --percent 20", 1)[1],
            step("maskserve models promote")[0],
        )
        live = [o for o in load.between(canary_start + 1, canary_end) if o.client != "pinned"]
        assert live
        for o in live:
            expected = "2" if traffic_bucket(o.digest) < CANARY_PERCENT else "1"
            assert _version(o.header) == expected, (o, traffic_bucket(o.digest))
        images = {o.digest for o in live}
        share = sum(traffic_bucket(d) < CANARY_PERCENT for d in images) / len(images)

        # the pinned key stayed on version 1 through the promotion; unpinned traffic moved to 2 and back
        pinned_versions = {_version(o.header) for o in outcomes if o.client == "pinned"}
        assert pinned_versions == {"1"}, pinned_versions
        promoted_end, rollback_start = step("maskserve models promote 2")[1], step("maskserve models promote 1")[0]
        on_2 = load.between(promoted_end + 1.5, rollback_start, "pool") + load.between(
            promoted_end + 1.5, rollback_start, "fresh"
        )
        assert on_2 and {_version(o.header) for o in on_2} == {"2"}
        rollback_out = step("maskserve models promote 1")[2]
        assert "drained in" in rollback_out and "version 2 unloaded" in rollback_out, rollback_out
        after = [
            o for o in load.between(step("maskserve models promote 1")[1] + 1.5, same_start) if o.client != "pinned"
        ]
        assert after and {_version(o.header) for o in after} == {"1"}

        # shadow copies are never billed: every credit moved belongs to a completed job
        with sqlite3.connect(served.data / "maskserve.db") as db:
            jobs = db.execute("SELECT count(*), sum(credits_used) FROM jobs WHERE status = 'completed'").fetchone()
            versions = dict(db.execute("SELECT id, model_version FROM jobs").fetchall())
        assert jobs[0] == len(outcomes) and jobs[1] == len(outcomes)
        assert all(versions[o.job_id] == _version(o.header) for o in outcomes)

        # the same weights twice: IoU 1.0; version 3's store freed with it
        same_shadow = same["shadow"]["3"]
        assert same_shadow["compared"] > 0 and same_shadow["errors"] == 0, same_shadow
        assert same_shadow["iou_p5"] >= 0.999, same_shadow
        assert "version 3 unloaded" in unloaded and _session_stubs(repo, "3") == 0
        assert _session_metric(served, "cache_bytes", "3") == 0

        report(
            f"release runbook under load: {len(outcomes)} requests, 0 failed; shadow v2 vs v1 IoU mean "
            f"{float(iou.group(3)):.3f} over {iou.group(1)} prompts; canary 20 %: {share:.0%} of {len(images)} "
            f"images on v2, each by its hash; pinned key on v1 through promote; rollback "
            f"{re.search(r'drained in [0-9.]+ s', rollback_out).group(0)}; same weights IoU mean "
            f"{same_shadow['iou_mean']:.4f} (p5 {same_shadow['iou_p5']:.4f})"
        )
    finally:
        assert served.stop() == 0
