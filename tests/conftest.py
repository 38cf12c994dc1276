"""Shared fixtures: one real SAM 2.1 tiny (random weights, seed 0), its export,
and one real Triton server from the pip wheel serving that export."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SEED, PostgresCluster, S3Server, start_api

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
