"""`maskserve models` against the real Triton, as an operator runs it (options after the subcommand)."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def _models(triton_server, tmp_path, *args: str, repository=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "maskserve.cli",
            "models",
            *args,
            "--triton-url",
            triton_server.opts.grpc_url,
            "--data-dir",
            str(tmp_path),
            "--model-repository",
            str(repository or triton_server.opts.model_repository),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_version_fails_in_seconds_with_a_clear_message(triton_server, tmp_path):
    started = time.monotonic()
    out = _models(triton_server, tmp_path, "load", "9")
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    assert "sam2_image_encoder_v9 does not exist: export version 9 first" in out.stderr, out.stderr
    assert took < 30, f"took {took:.0f} s"
    listed = _models(triton_server, tmp_path, "list")
    assert listed.returncode == 0 and "sam2_session" in listed.stdout  # the loaded version kept serving


def test_a_version_triton_cannot_find_fails_in_seconds_naming_the_loaded_ones(triton_server, tmp_path):
    """The repository the command reads has version 9; the one Triton serves does not."""
    import shutil

    from maskserve.core import signatures as sig

    elsewhere = tmp_path / "elsewhere"
    for model in sig.LIFECYCLE_MODELS:
        for version in ("1", "9"):
            (elsewhere / sig.served_name(model, version)).mkdir(parents=True)
            source = triton_server.opts.model_repository / sig.served_name(model, 1) / "config.pbtxt"
            shutil.copyfile(source, elsewhere / sig.served_name(model, version) / "config.pbtxt")
    started = time.monotonic()
    out = _models(triton_server, tmp_path, "load", "9", repository=elsewhere)
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"could not load sam2_\w+_v9 \(is version 9 exported", out.stderr), out.stderr
    assert "loaded versions: 1" in out.stderr
    assert took < 30, f"took {took:.0f} s"
    assert _models(triton_server, tmp_path, "list").returncode == 0
