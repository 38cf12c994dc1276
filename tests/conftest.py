"""Shared fixtures: one real SAM 2.1 tiny (random weights, seed 0), its export,
and one real Triton server from the pip wheel serving that export."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
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
