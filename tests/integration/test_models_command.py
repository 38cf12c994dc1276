"""`maskserve models` against the real Triton, as an operator runs it (options after the subcommand)."""

from __future__ import annotations

import subprocess
import sys
import time


def _models(triton_server, tmp_path, *args: str) -> subprocess.CompletedProcess:
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
    assert "has no version 9 in Triton's model repository" in out.stderr and "loaded versions: 1" in out.stderr
    assert took < 30, f"took {took:.0f} s"
    listed = _models(triton_server, tmp_path, "list")
    assert listed.returncode == 0 and "sam2_session" in listed.stdout  # the loaded version kept serving
