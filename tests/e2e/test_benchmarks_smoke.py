"""Seconds-scale runs of every benchmark, so the suite cannot rot (figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_suite_smoke(tmp_path):
    out = tmp_path / "suite.json"
    proc = _run("benchmarks.suite", "--smoke", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    assert len(results["targets"]) == 18 and all({"target", "met", "measured"} <= set(t) for t in results["targets"])
    assert results["concurrent_c8"]["errors"] == {} and results["cached_c1"]["errors"] == {}
    assert results["click_c1"]["errors"] == {} and results["click_c1"]["decoder_compute_ms"] > 0
    assert results["batch"]["completed"] == results["batch"]["images"]
    assert 0 < results["wire"]["cached_prompt_bytes"] < results["wire"]["new_image_bytes"]
    assert results["prompts_c8"]["prompts_per_s"] > 0
    assert results["encoder"]["reference_images_per_s"] > 0 and results["encoder"]["ours_images_per_s"] > 0
    assert "| target | measured | met |" in proc.stdout


def test_loadgen_smoke_against_a_running_service(api, tmp_path):
    _, key = api.create_key(100)
    out = tmp_path / "load.json"
    _run(
        "benchmarks.loadgen",
        "--url",
        api.url,
        "--key",
        key,
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--mix",
        "new=1,cached=2,batch=1",
        "--batch-size",
        "2",
        "--json",
        str(out),
    )
    summary = json.loads(out.read_text())
    assert summary["requests"] == 4 and summary["error_rate"] == 0.0
    assert set(summary["latency_ms"]) == {"new", "cached", "batch"}
    assert summary["event_loop_lag"]["samples"] > 0


def test_rendering_smoke(tmp_path):
    out = tmp_path / "rendering.json"
    proc = _run("benchmarks.rendering", "--repeats", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert all(e["same_pixels"] for r in results for e in r["encoders"].values())


def test_model_runtimes_smoke(exported_repo, tmp_path):
    out = tmp_path / "runtimes.json"
    _run("benchmarks.model_runtimes", "--repo", str(exported_repo), "--repeats", "1", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert set(results["encoder"]) == {"pytorch fp32 (reference)", "onnxruntime fp32", "openvino fp32", "openvino bf16"}
    assert all(r["median_ms"] > 0 for part in results.values() for r in part.values())


def test_triton_configs_smoke(exported_repo, tmp_path):
    out = tmp_path / "configs.json"
    proc = _run(
        "benchmarks.triton_configs", "--repo", str(exported_repo), "--images", "1", "--configs", "0", "--json", str(out)
    )
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["encoder_images_per_s"] > 0 and rows[0]["decoder_prompts_per_s"] > 0
    assert "vs PyTorch" in proc.stdout


def test_output_file_backends_smoke(tmp_path):
    out = tmp_path / "files.json"
    proc = _run("benchmarks.files_backends", "--runs", "1", "--size", "320x240", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"database", "s3"}
    # the database backend writes every output byte to the WAL; s3 only the rows
    assert results["database"]["wal_bytes"][0] > results["database"]["output_bytes"][0] > 0
    assert results["s3"]["wal_bytes"][0] < results["database"]["wal_bytes"][0]
    assert "PostgreSQL WAL written" in proc.stdout


def test_s3_clients_smoke():
    proc = _run("benchmarks.s3_clients", "--objects", "4", "--mib", "0.1", "--runs", "1")
    assert "| put all |" in proc.stdout and "| get all |" in proc.stdout
