"""`maskserve serve` and `maskserve frontend` as a user runs them: processes, signals, ports."""

from __future__ import annotations

import requests

from maskserve.triton.server import free_port
from tests.plugins.processes import start_cli, stop_cli, wait_for_line


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
    proc = start_cli(args, tmp_path, tmp_path)
    try:
        lines = wait_for_line(proc, "maskserve is listening")
        assert any("RANDOM WEIGHTS" in line for line in lines)
        assert "keys create" in proc.stdout.readline()
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["random_weights"] is True
    finally:
        code, rest = stop_cli(proc)
    assert code == 0, rest[-3000:]
    assert "tritonserver stopped (exit code 0)" in rest
    assert (tmp_path / "data" / "maskserve.db").is_file()  # the default data dir, where the admin commands look


def test_frontend_alone_against_an_existing_triton(triton_server, tmp_path):
    port = free_port()
    proc = start_cli(
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
        wait_for_line(proc, "maskserve is listening", timeout=60)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 200
    finally:
        code, rest = stop_cli(proc)
    assert code == 0, rest[-3000:]
