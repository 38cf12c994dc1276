"""Shared fixtures: one real SAM 2.1 tiny (random weights, seed 0), its export,
and one real Triton server from the pip wheel serving that export."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from export.command import ExportRequest, run_export
from export.variants import DEFAULT_VARIANT

SEED = 0
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report():
    """Tests append the figures they measured; they are printed at the end of the run."""
    return FIGURES.append


@pytest.fixture(scope="session")
def sam2_model():
    import torch

    from export.checkpoints import build_model
    from export.variants import get_variant

    torch.set_num_threads(2)
    return build_model(get_variant(DEFAULT_VARIANT), seed=SEED)


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model_repository")
    run_export(ExportRequest(out=out, random_weights=True, seed=SEED))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def triton_server(exported_repo, tmp_path_factory):
    from maskserve.tritonserver import TritonOptions, TritonServer

    opts = TritonOptions(
        model_repository=exported_repo,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        work_dir=tmp_path_factory.mktemp("triton"),
    )
    with TritonServer(opts) as server:
        yield server


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

        from frontend.app import create_app

        self.app = create_app(self.settings)
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.settings.port).start()

    def start(self) -> "ApiServer":
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
        from frontend.app import STORE

        key, secret = self.call(self.app[STORE].create_key(name, credits))
        return key.id, secret

    def store(self):
        from frontend.app import STORE

        return self.app[STORE]


def start_api(tmp_path_factory, triton_url: str, **overrides) -> ApiServer:
    from frontend.config import Settings

    settings = Settings(
        port=free_port(), data_dir=tmp_path_factory.mktemp("data"), triton_url=triton_url, **overrides
    )
    return ApiServer(settings).start()


@pytest.fixture(scope="session")
def api(triton_server, tmp_path_factory):
    server = start_api(tmp_path_factory, triton_server.opts.grpc_url)
    yield server
    server.stop()


def _pg_bindir() -> "Path | None":
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on loopback, in a throw-away cluster (Debian's binaries)."""
    import pwd
    import subprocess
    import tempfile

    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: scripts/setup.sh installs Debian's postgresql package")
    root = Path(tempfile.mkdtemp(prefix="maskserve-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "maskserve", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", "start"],
                   check=True, capture_output=True)
    yield f"postgresql://maskserve@127.0.0.1:{port}"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)


@pytest.fixture()
def postgres_url(postgres_server):
    """A fresh database for one test."""
    import asyncio
    import uuid

    import asyncpg

    name = "t_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()

    asyncio.run(create())
    return f"{postgres_server}/{name}"
