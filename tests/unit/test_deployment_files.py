"""The deployment files stay consistent with the code (no Docker engine or cluster here)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from maskserve.frontend.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Triton 2.51 (the nvidia-pytriton wheel's server) is NGC release 24.10.
NGC_TRITON = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_IMAGE = "maskserve-triton:latest"  # NGC_TRITON plus the session model's code (deploy/triton/Dockerfile)
SETTING_VARS = {"MASKSERVE_" + f.name.upper() for f in fields(Settings)} | {
    "MASKSERVE_RATE_SINGLE",
    "MASKSERVE_RATE_BATCH",
    "MASKSERVE_RATE_READ",
    "MASKSERVE_MODEL_REPOSITORY",  # `maskserve models` (cli/models.py), run in a frontend container
}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_wires_export_triton_postgres_frontends_and_a_balancer():
    services = _compose()["services"]
    assert set(services) == {"export", "triton-0", "triton-1", "postgres", "minio", "frontend", "lb"}
    for name in ("triton-0", "triton-1"):  # replicas by name: affinity needs each one addressable
        triton = services[name]
        assert triton["image"] == TRITON_IMAGE and triton["build"]["dockerfile"] == "deploy/triton/Dockerfile"
        assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
        assert "--model-control-mode=explicit" in triton["command"]
        assert "--load-model=*" in triton["command"]  # every version is a model of its own
        assert triton["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert f"FROM {NGC_TRITON}" in (ROOT / "deploy/triton/Dockerfile").read_text()
    export_cmd = " ".join(services["export"]["command"])
    assert "maskserve export" in export_cmd and "--target gpu" in export_cmd and "--out /models" in export_cmd
    front = services["frontend"]
    assert front["command"][0] == "frontend"
    assert {"triton-0", "triton-1", "postgres", "minio"} <= set(front["depends_on"])
    assert "readyz" in " ".join(front["healthcheck"]["test"])
    env = front["environment"]
    assert set(env) <= SETTING_VARS and env["MASKSERVE_DATABASE_URL"].startswith("postgresql://")
    assert env["MASKSERVE_TRITON_URL"] == "triton-0:8001,triton-1:8001"
    # output files in MinIO by default, reached by the frontends inside and by clients on the host
    assert env["MASKSERVE_FILES_BACKEND"] == "s3" and env["MASKSERVE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MASKSERVE_S3_BUCKET"] and "9000:9000" in services["minio"]["ports"]
    assert services["minio"]["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert "frontend:8080" in (ROOT / "deploy/nginx/nginx.conf").read_text()
    for name in ("triton-0", "postgres", "frontend"):
        assert "healthcheck" in services[name]


def test_compose_commands_exist_in_the_cli():
    from maskserve.cli import build_parser

    parser = build_parser()
    services = _compose()["services"]
    parser.parse_args(services["frontend"]["command"])
    export = re.sub(r"\$\{[^}]*\}", "", " ".join(services["export"]["command"])).split("maskserve ", 1)[1].split()
    parser.parse_args([*export, "--random-weights"])


def test_kubernetes_manifests():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/maskserve.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Job", "maskserve-export"),
        ("StatefulSet", "triton"),
        ("Deployment", "maskserve-frontend"),
        ("Service", "triton"),
        ("Service", "maskserve"),
        ("PersistentVolumeClaim", "maskserve-models"),
    } <= kinds
    from maskserve.cli import build_parser

    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] == "Service" and doc["metadata"]["name"] == "triton":
            assert doc["spec"]["clusterIP"] == "None"  # headless: one DNS name per replica
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if doc["kind"] != "Job":
                    assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/v2/health/ready")
                if doc["kind"] == "StatefulSet":
                    assert container["image"] == TRITON_IMAGE and "--load-model=*" in container["args"]
                else:
                    assert container["image"].startswith("maskserve:")
                    build_parser().parse_args(container["args"])
                    for var in container.get("env", []):
                        assert var["name"] in SETTING_VARS
        if doc["kind"] == "Deployment":
            assert doc["spec"]["selector"]["matchLabels"] == doc["spec"]["template"]["metadata"]["labels"]
            env = {v["name"]: v for v in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["MASKSERVE_FILES_BACKEND"]["value"] == "s3"
            for name in ("ENDPOINT_URL", "BUCKET", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
                assert env[f"MASKSERVE_S3_{name}"]["valueFrom"]["secretKeyRef"]["name"] == "maskserve-s3"


def test_docs_name_the_same_triton_image():
    assert NGC_TRITON in (ROOT / "docs" / "TRITON.md").read_text()
    assert NGC_TRITON in (ROOT / "docs" / "DEPLOYMENT.md").read_text()
