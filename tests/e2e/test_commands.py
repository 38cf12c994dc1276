"""`maskserve serve` and `maskserve frontend` as a user runs them: processes, signals, ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.helpers import free_port


def _start(args: list[str], cwd, home) -> subprocess.Popen:
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "maskserve.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines[-30:])
    raise AssertionError("exited early:\n" + "".join(lines[-40:]))


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, rest


def test_serve_runs_triton_and_the_api_then_stops_cleanly(exported_repo, tmp_path):
    port = free_port()
    args = [
        "serve",
        "--port",
        str(port),
        "--model-repository",
        str(exported_repo),
        "--triton-grpc-port",
        str(free_port()),
        "--triton-http-port",
        str(free_port()),
        "--triton-metrics-port",
        str(free_port()),
    ]
    proc = _start(args, tmp_path, tmp_path)
    try:
        lines = _wait_for(proc, "maskserve is listening")
        assert any("RANDOM WEIGHTS" in line for line in lines)
        assert "keys create" in proc.stdout.readline()
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["random_weights"] is True
    finally:
        code, rest = _stop(proc)
    assert code == 0, rest[-3000:]
    assert "tritonserver stopped (exit code 0)" in rest
    assert (tmp_path / "data" / "maskserve.db").is_file()  # the default data dir, where the admin commands look


def test_frontend_alone_against_an_existing_triton(triton_server, tmp_path):
    port = free_port()
    proc = _start(
        [
            "frontend",
            "--triton-url",
            triton_server.opts.grpc_url,
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        tmp_path,
        tmp_path,
    )
    try:
        _wait_for(proc, "maskserve is listening", timeout=60)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 200
    finally:
        code, rest = _stop(proc)
    assert code == 0, rest[-3000:]
