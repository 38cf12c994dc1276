"""`bash scripts/run.sh serve` picks real weights by default: the official checkpoint when it can be fetched
(here from a local HTTP server standing in for Meta's CDN), random weights, said loudly, only when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import requests
import torch

from maskserve.export import checkpoints
from maskserve.export.command import ExportRequest, run_export
from maskserve.export.repository import version_dir
from maskserve.export.variants import get_variant
from maskserve.triton.server import free_port
from tests.plugins.processes import NAME, Cdn, stop_cli, wait_for_line

ROOT = Path(__file__).parents[2]


def serve(tmp_path: Path, repo: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "data")]
    for flag in ("--triton-grpc-port", "--triton-http-port", "--triton-metrics-port"):
        args += [flag, str(free_port())]
    proc = subprocess.Popen(
        ["bash", "scripts/run.sh", "serve", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "HOME": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
            "MASKSERVE_MODEL_REPOSITORY": str(repo),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port


def ready_then_stop(proc: subprocess.Popen, port: int) -> tuple[str, dict]:
    """Wait until the service listens, read /readyz, stop it cleanly; → (its output so far, /readyz)."""
    try:
        lines = wait_for_line(proc, "maskserve is listening")
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json()
    finally:
        code, rest = stop_cli(proc)
    assert code == 0, rest[-3000:]
    return "".join(lines), ready


def test_serve_exports_the_fetched_checkpoint_and_falls_back_only_when_it_cannot(tmp_path, report):
    (tmp_path / "cdn").mkdir()
    cdn = Cdn(tmp_path / "cdn")
    model = checkpoints.build_model(get_variant("sam2.1_hiera_tiny"), seed=77)
    torch.save({"model": model.state_dict()}, cdn.root / NAME)
    digest = checkpoints.sha256_of(cdn.root / NAME)
    cache = tmp_path / "cache"
    mirror = {
        "MASKSERVE_CHECKPOINT_URL": f"{cdn.url}/{NAME}",
        "MASKSERVE_CHECKPOINT_SHA256": digest,
        "MASKSERVE_CHECKPOINT_DIR": str(cache),
    }
    try:
        text, ready = ready_then_stop(*serve(tmp_path, tmp_path / "repo", mirror))
        assert ready["random_weights"] is False and digest in ready["models"][0]["weights"], ready
        assert "RANDOM WEIGHTS" not in text
        assert (cache / NAME).is_file() and cdn.requests == [None]
    finally:
        cdn.stop()
    # the checkpoint is cached: a new repository needs no network at all
    version = run_export(
        ExportRequest(
            out=tmp_path / "repo2",
            auto_weights=True,
            checkpoint_url=f"{cdn.url}/{NAME}",
            checkpoint_sha256=digest,
            download_dir=cache,
        )
    )
    manifest = json.loads(
        (version_dir(tmp_path / "repo2", "sam2_image_encoder", version) / "manifest.json").read_text()
    )
    assert manifest["weights"]["sha256"] == digest
    # unreachable and nothing cached: random weights, and the terminal, the log and /readyz say so
    offline = {
        **mirror,
        "MASKSERVE_CHECKPOINT_DIR": str(tmp_path / "empty"),
        "MASKSERVE_CHECKPOINT_URL": cdn.url + "/x",
    }
    text, ready = ready_then_stop(*serve(tmp_path, tmp_path / "repo3", offline))
    assert (
        "exporting with RANDOM WEIGHTS instead" in text and "[serve] the model was exported with RANDOM WEIGHTS" in text
    )
    assert "runs RANDOM WEIGHTS" in text and ready["random_weights"] is True
    report("serve: checkpoint fetched from a local server, verified and cached; offline: random weights, said 3 ways")
