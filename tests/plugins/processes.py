"""Processes the tests start as a user would: the ``maskserve`` command line, and a loopback file server
standing in for the checkpoint CDN."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def start_cli(args: list[str], cwd, home) -> subprocess.Popen:
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "maskserve.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines[-30:])
    raise AssertionError("exited early:\n" + "".join(lines[-40:]))


def create_key(store_args: list[str], cwd, home, credits: int = 100) -> tuple[str, str]:
    """``maskserve keys create`` on the store ``store_args`` name (``--data-dir D`` or ``--database-url U``);
    → (the API key, its id)."""
    out, _ = start_cli(
        ["keys", "create", "--name", "k", "--credits", str(credits), *store_args], cwd, home
    ).communicate(timeout=60)
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("api key:"))
    key_id = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("key id:"))
    return key, key_id


def stop_cli(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, rest


NAME = "sam2.1_hiera_tiny.pt"


class Cdn:
    """A loopback HTTP server for one directory; ``cut_after`` breaks each full response off after that many bytes."""

    def __init__(self, root: Path, ranges: bool = True) -> None:
        self.root = root
        self.ranges = ranges
        self.cut_after: int | None = None
        self.requests: list[str | None] = []  # the Range header of every GET
        cdn = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cdn.requests.append(self.headers.get("Range"))
                path = cdn.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                wanted = self.headers.get("Range")
                if cdn.ranges and wanted and wanted.startswith("bytes="):
                    start = int(wanted[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if cdn.cut_after is not None and start == 0:
                    body = body[: cdn.cut_after]  # the promised length never arrives
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
