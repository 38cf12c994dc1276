"""The whole embedded stack for a benchmark, as separate processes like in production:
Triton from the pip wheel and ``maskserve frontend``; the load comes from this process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from maskserve.triton.server import free_port


@dataclass(frozen=True)
class Stack:
    url: str  # REST API base
    key: str  # an API key with plenty of credits
    grpc_url: str  # Triton
    frontend_pid: int
    repo: Path
    triton_metrics_url: str  # Triton's Prometheus endpoint (the session model's store)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def export_default(work: Path, session_cache_bytes: int | None = None) -> Path:
    from maskserve.export.command import ExportRequest, run_export
    from maskserve.export.repository import SessionSettings

    repo = work / "model_repository"
    session = SessionSettings(cache_bytes=session_cache_bytes) if session_cache_bytes else SessionSettings()
    run_export(ExportRequest(out=repo, random_weights=True, seed=0, session=session))
    return repo


CLI = [sys.executable, "-m", "maskserve.cli"]


def create_key(args: list[str], env: dict[str, str] | None = None) -> str:
    """A new API key with plenty of credits, made by ``maskserve keys create`` (``args``: where its store is)."""
    created = subprocess.run(
        [*CLI, "keys", "create", "--name", "bench", "--credits", str(10**9), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("api key:"))


def wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120.0) -> None:
    """Until ``url`` answers 200; the process ending or the timeout first is an error naming its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up; see {log}")
        time.sleep(0.3)


@contextlib.contextmanager
def running_stack(
    repo: Path | None = None, env: dict[str, str] | None = None, session_cache_bytes: int | None = None
) -> Iterator[Stack]:
    from maskserve.triton.server import TritonOptions, TritonServer

    work = Path(tempfile.mkdtemp(prefix="maskserve-bench-"))
    repo = repo or export_default(work, session_cache_bytes)
    opts = TritonOptions.on_free_ports(repo, work / "triton")
    data = work / "data"
    key = create_key(["--data-dir", str(data)])
    port = free_port()
    frontend_env = {
        **os.environ,
        "MASKSERVE_RATE_SINGLE": str(10**6),
        "MASKSERVE_RATE_BATCH": str(10**6),
        "MASKSERVE_RATE_READ": str(10**6),
        # the benchmarks measure how fast a grid runs, not where a deployment draws its synchronous limit
        "MASKSERVE_EVERYTHING_BUDGET_S": "1800",
        **(env or {}),
    }
    with TritonServer(opts):
        proc = subprocess.Popen(
            [*CLI, "frontend", "--triton-url", opts.grpc_url, "--port", str(port), "--data-dir", str(data)],
            env=frontend_env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "frontend.log", "w"),  # noqa: SIM115 (the process keeps it)
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(proc, f"{url}/readyz", work / "frontend.log")
            yield Stack(url, key, opts.grpc_url, proc.pid, repo, f"http://127.0.0.1:{opts.metrics_port}/metrics")
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples whose line starts with ``name``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
