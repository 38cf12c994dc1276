"""The deployment files stay consistent with the code (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Triton 2.51 (the nvidia-pytriton wheel's server) is NGC release 24.10.
NGC_TRITON = "nvcr.io/nvidia/tritonserver:24.10-py3"


def test_compose_runs_the_gpu_export_then_ngc_triton():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["triton"]["image"] == NGC_TRITON
    assert services["triton"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert any("--model-repository=/models" in part for part in services["triton"]["command"])
    export_cmd = " ".join(services["export"]["command"])
    assert "maskserve export" in export_cmd and "--target gpu" in export_cmd and "--out /models" in export_cmd
    assert "scripts/setup.sh" in export_cmd
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_docs_name_the_same_triton_image():
    assert NGC_TRITON in (ROOT / "docs" / "TRITON.md").read_text()
