"""Shared fixtures: one real SAM 2.1 tiny (random weights, seed 0), its export,
and one real Triton server from the pip wheel serving that export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SEED, free_port, start_api

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
    from maskserve.tritonserver import TritonOptions, TritonServer

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


def _pg_bindir() -> Path | None:
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
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "maskserve", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(root / "log"),
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
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
