"""Test inputs shared by several test modules."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from maskserve.tritonserver import free_port

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
"""The random-weights seed of the suite's one exported model."""


def make_image(height: int = 1024, width: int = 1024, seed: int = 1) -> np.ndarray:
    """A deterministic picture with structure (shapes on a gradient), normalised as SAM 2 does."""
    from maskserve.core.signatures import PIXEL_MEAN, PIXEL_STD

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 * np.ones_like(xx)], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, rng.uniform(60, 200)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        rgb[inside] = rng.uniform(0, 1, 3)
    rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    norm = (np.clip(rgb, 0, 1) - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    return norm.transpose(2, 0, 1)[None].astype(np.float32)


def image_bytes(
    width: int = 640, height: int = 480, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, **save
) -> bytes:
    """An encoded picture: a coloured rectangle on a gradient (distinct bytes per seed)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), np.full_like(xx, 90)], -1)
    rgb = rgb.astype(np.uint8)
    rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_mask(width: int, height: int, box: tuple[int, int, int, int], soft: bool = False, mode: str = "L") -> bytes:
    """A white box on black (or a horizontal grey ramp inside the box when ``soft``)."""
    import io

    from PIL import Image

    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    if soft:
        mask[y1:y2, x1:x2] = np.linspace(1, 254, x2 - x1, dtype=np.uint8)[None, :]
    else:
        mask[y1:y2, x1:x2] = 255
    if mode == "I;16":  # real 16-bit: white is 65535
        img = Image.fromarray(mask.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(mask, "L")
        if mode != "L":
            img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ApiServer:
    """The real frontend app on a loopback port, in a thread with its own event loop."""

    def __init__(self, settings) -> None:
        import asyncio
        import threading

        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner = None
        self.app = None

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        from aiohttp import web

        from maskserve.frontend.app import create_app

        self.app = create_app(self.settings)
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.settings.port).start()

    def start(self) -> ApiServer:
        self._thread.start()
        assert self._ready.wait(60), "frontend did not start"
        return self

    def call(self, coro):
        """Run a coroutine on the server's loop (e.g. a store query) and wait for it."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def create_key(self, credits: int, name: str = "test") -> tuple[str, str]:
        from maskserve.frontend.http.state import STORE

        key, secret = self.call(self.app[STORE].create_key(name, credits))
        return key.id, secret

    def rotate_webhook_secret(self, key_id: str) -> str:
        from maskserve.frontend.http.state import STORE

        return self.call(self.app[STORE].rotate_webhook_secret(key_id))

    def store(self):
        from maskserve.frontend.http.state import STORE

        return self.app[STORE]


def start_api(tmp_path_factory, triton_url: str, **overrides) -> ApiServer:
    from maskserve.frontend.config import Settings

    settings = Settings(port=free_port(), data_dir=tmp_path_factory.mktemp("data"), triton_url=triton_url, **overrides)
    return ApiServer(settings).start()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def ledger_state(db_path: Path, key_id: str) -> dict:
    with sqlite3.connect(db_path) as db:
        return {
            "balance": db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0],
            "ledger": db.execute("SELECT COALESCE(SUM(delta), 0) FROM ledger WHERE key_id = ?", (key_id,)).fetchone()[
                0
            ],
            "charged": db.execute(
                "SELECT COALESCE(SUM(credits_used), 0) FROM jobs WHERE key_id = ?", (key_id,)
            ).fetchone()[0],
            "processing": db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'processing'").fetchone()[0],
            "completed": db.execute(
                "SELECT COUNT(*) FROM jobs WHERE key_id = ? AND status = 'completed'", (key_id,)
            ).fetchone()[0],
        }


class Served:
    """`maskserve serve` as a process, with its log captured."""

    def __init__(self, repo: Path, tmp: Path, credits: int = 50, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.triton_grpc_port = free_port()
        self.triton_url = f"127.0.0.1:{self.triton_grpc_port}"
        self.triton_metrics_port = free_port()
        self.data = tmp / "data"
        self.log_path = tmp / "serve.log"
        cli = [sys.executable, "-m", "maskserve.cli"]
        out = subprocess.run(
            [*cli, "keys", "create", "--name", "r", "--credits", str(credits), "--data-dir", str(self.data)],
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("api key:"))
        self.key_id = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("key id:"))
        env = {
            **os.environ,
            "HOME": str(tmp),
            "PYTHONUNBUFFERED": "1",
            "MASKSERVE_TRITON_TIMEOUT_S": "30",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [
                *cli,
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data),
                "--model-repository",
                str(repo),
                "--triton-grpc-port",
                str(self.triton_grpc_port),
                "--triton-http-port",
                str(free_port()),
                "--triton-metrics-port",
                str(self.triton_metrics_port),
            ],
            env=env,
            stdout=open(self.log_path, "w"),  # noqa: SIM115 (the process keeps it)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready()

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError("not ready:\n" + self.log()[-3000:])

    def log(self) -> str:
        return self.log_path.read_text()

    def triton_pid(self) -> int:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid), "-f", "bin/tritonserver"], capture_output=True, text=True
        )
        return int(out.stdout.split()[0])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


class S3Server:
    """A real S3-compatible HTTP server in its own process: moto's standalone server.

    (MinIO, the more faithful choice, is not installable from the package
    registries here; moto speaks the S3 REST API with SigV4 clients, multipart
    uploads, lifecycle configurations and presigned URLs, but does not enforce
    a presigned URL's signature or expiry.)
    """

    ACCESS_KEY = "maskserve-test"
    SECRET_KEY = "maskserve-test-secret"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> S3Server:
        import socket
        import subprocess
        import sys
        import time

        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("the S3 server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def settings(self, bucket: str, **more) -> dict:
        """The frontend settings that put its output files in ``bucket`` on this server."""
        return {
            "files_backend": "s3",
            "s3_endpoint_url": self.url,
            "s3_bucket": bucket,
            "s3_access_key_id": self.ACCESS_KEY,
            "s3_secret_access_key": self.SECRET_KEY,
            **more,
        }


class PostgresCluster:
    """A real PostgreSQL server on loopback, in a throw-away cluster (Debian's binaries)."""

    def __init__(self) -> None:
        self.url = ""
        self._stop: list[str] = []

    @staticmethod
    def bindir() -> Path | None:
        import glob
        import os
        import shutil

        found = shutil.which("pg_ctl")
        if found:
            return Path(os.path.realpath(found)).parent
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        return Path(candidates[-1]) if candidates else None

    def start(self) -> PostgresCluster:
        import os
        import pwd
        import subprocess
        import tempfile

        bindir = self.bindir()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed: scripts/setup.sh installs Debian's postgresql package"
            )
        root = Path(tempfile.mkdtemp(prefix="maskserve-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chmod(root, 0o755)
            os.chown(root, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        data, port = root / "data", free_port()
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "maskserve", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
        subprocess.run(
            [*pg_ctl, "-w", "-l", str(root / "log"), "-o", options, "start"], check=True, capture_output=True
        )
        self._stop = [*pg_ctl, "-m", "fast", "stop"]
        self.url = f"postgresql://maskserve@127.0.0.1:{port}"
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database; → its URL."""
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(f"{self.url}/postgres")
            await conn.execute(f"CREATE DATABASE {name}")
            await conn.close()

        asyncio.run(create())
        return f"{self.url}/{name}"

    def stop(self) -> None:
        import subprocess

        if self._stop:
            subprocess.run(self._stop, capture_output=True)
