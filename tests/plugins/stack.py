"""The suite's shared stack, as a pytest plugin: one real SAM 2.1 tiny (random weights, seed 0), its
export, one real Triton from the pip wheel serving it, the real frontend in a thread, a real PostgreSQL
and a real S3-compatible server; and ``maskserve serve`` as a process (``Served``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from maskserve.devtools.postgres import PostgresCluster
from maskserve.devtools.s3 import S3Server
from maskserve.triton.server import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = 0
"""The random-weights seed of the suite's one exported model."""


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


def encoder_runs(url: str, version: int | str = 1) -> int:
    """Images version ``version``'s encoder has run on the Triton at ``url`` (Triton's own statistics)."""
    import tritonclient.grpc as grpcclient

    from maskserve.core import signatures as sig

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(sig.served_name(sig.ENCODER_MODEL, version)).model_stats
        return sum(s.inference_count for s in stats)
    finally:
        client.close()


def repository_with_session(exported_repo: Path, where: Path, **params: str) -> Path:
    """A copy of the export whose session model has ``params`` set, changed as an operator changes a version's
    setting: in its own config.pbtxt."""
    import shutil

    from maskserve.core import signatures as sig
    from maskserve.triton import config as model_config

    repo = where / "repo"
    shutil.copytree(exported_repo, repo)
    path = repo / sig.served_name(sig.SESSION_MODEL, 1) / "config.pbtxt"
    edited = model_config.parse(path.read_text())
    for key, value in params.items():
        edited.parameters[key].string_value = value
    path.write_text(model_config.render(edited))
    return repo


def repository_with_cache(exported_repo: Path, where: Path, cache_bytes: int) -> Path:
    """A copy of the export whose session store holds ``cache_bytes``."""
    return repository_with_session(exported_repo, where, cache_bytes=str(cache_bytes))


def start_api(tmp_path_factory, triton_url: str, **overrides) -> ApiServer:
    from maskserve.frontend.config import Settings

    settings = Settings(port=free_port(), data_dir=tmp_path_factory.mktemp("data"), triton_url=triton_url, **overrides)
    return ApiServer(settings).start()


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


@pytest.fixture(scope="session")
def sam2_model():
    import torch

    from maskserve.export.checkpoints import build_model
    from maskserve.export.variants import DEFAULT_VARIANT, get_variant

    torch.set_num_threads(2)
    return build_model(get_variant(DEFAULT_VARIANT), seed=SEED)


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory) -> Path:
    from maskserve.export.command import ExportRequest, run_export

    out = tmp_path_factory.mktemp("model_repository")
    run_export(ExportRequest(out=out, random_weights=True, seed=SEED))
    return out


@pytest.fixture(scope="session")
def triton_server(exported_repo, tmp_path_factory):
    from maskserve.triton.server import TritonOptions, TritonServer

    opts = TritonOptions.on_free_ports(exported_repo, tmp_path_factory.mktemp("triton"))
    with TritonServer(opts) as server:
        yield server


@pytest.fixture(scope="session")
def api(triton_server, tmp_path_factory):
    server = start_api(tmp_path_factory, triton_server.opts.grpc_url)
    yield server
    server.stop()


@pytest.fixture()
def key(api):
    """A fresh API key with 100 credits on the shared test service."""
    _, secret = api.create_key(100)
    return secret


@pytest.fixture(scope="session")
def postgres_cluster():
    """A real PostgreSQL server on loopback, in a throw-away cluster (Debian's binaries)."""
    try:
        cluster = PostgresCluster().start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_server(postgres_cluster):
    """The server's URL, without a database name."""
    return postgres_cluster.url


@pytest.fixture()
def postgres_url(postgres_cluster):
    """A fresh database for one test."""
    import uuid

    return postgres_cluster.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's standalone server, a process) for the whole session."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture()
def s3_bucket():
    """A fresh bucket name for one test (the frontend creates the bucket)."""
    import uuid

    return "maskserve-" + uuid.uuid4().hex[:12]
