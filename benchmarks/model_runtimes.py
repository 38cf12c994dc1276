"""Encoder and decoder latency per CPU runtime and precision, against PyTorch.

Runs SAM 2.1 tiny (random weights unless --repo points at another export) in
this process, one image/prompt at a time, with the same thread count for every
runtime, interleaving the runtimes round by round so that machine noise hits
all of them alike. Prints medians and the ratio to PyTorch fp32 eager, and
writes the figures as JSON.

    python -m benchmarks.model_runtimes --repeats 7 --json benchmarks/results/model_runtimes.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _ov(path: Path, precision: str, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, help="exported model repository (default: export tiny now)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from maskserve.core import signatures as sig
    from maskserve.core.prompts import pack_prompt
    from maskserve.export import reference
    from maskserve.export.checkpoints import build_model
    from maskserve.export.command import ExportRequest, run_export
    from maskserve.export.repository import existing_versions, read_manifest, version_dir
    from maskserve.export.variants import get_variant

    torch.set_num_threads(args.threads)
    repo = args.repo
    if repo is None:
        repo = Path(tempfile.mkdtemp(prefix="maskserve-bench-"))
        run_export(ExportRequest(out=repo, random_weights=True, seed=0))
    version = existing_versions(repo)[-1]
    manifest = read_manifest(version_dir(repo, sig.ENCODER_MODEL, version))
    model = build_model(get_variant(manifest["model"]), seed=manifest["weights"].get("seed") or 0)
    if manifest["weights"]["kind"] == "checkpoint":
        raise SystemExit("pass the checkpoint's export only together with the checkpoint (not supported here)")
    enc_path = version_dir(repo, sig.ENCODER_MODEL, version) / "model.onnx"
    dec_path = version_dir(repo, sig.DECODER_MODEL, version) / "model.onnx"

    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    feats = reference.encode(model, torch.from_numpy(image))
    point = np.array([[400.0, 500.0]], np.float32)
    coords, labels = pack_prompt(point, np.array([1]), None)
    dec_feeds = {
        "image_embed": feats["image_embed"].numpy(),
        "high_res_feats_0": feats["high_res_feats"][0].numpy(),
        "high_res_feats_1": feats["high_res_feats"][1].numpy(),
        "point_coords": coords[None],
        "point_labels": labels[None],
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    image_t = torch.from_numpy(image)
    encoders = {
        "pytorch fp32 (reference)": lambda: reference.encode(model, image_t),
        "onnxruntime fp32": (lambda run: lambda: run({"image": image}))(_ort(enc_path, args.threads)),
        "openvino fp32": (lambda run: lambda: run({"image": image}))(_ov(enc_path, "fp32", args.threads)),
        "openvino bf16": (lambda run: lambda: run({"image": image}))(_ov(enc_path, "bf16", args.threads)),
    }
    decoders = {
        "pytorch fp32 (reference)": lambda: reference.decode(model, feats, point, np.array([1]), None, None, True),
        "onnxruntime fp32": (lambda run: lambda: run(dec_feeds))(_ort(dec_path, args.threads)),
        "openvino fp32": (lambda run: lambda: run(dec_feeds))(_ov(dec_path, "fp32", args.threads)),
    }
    results: dict[str, dict[str, list[float]]] = {"encoder": {}, "decoder": {}}
    for part, fns in (("encoder", encoders), ("decoder", decoders)):
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                results[part].setdefault(name, []).append((time.perf_counter() - start) * 1000)

    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "model": manifest["model"],
        "results": {},
    }
    print(
        f"SAM 2.1 tiny, batch 1, {args.threads} threads, median of "
        f"{args.repeats} (ms); ratio = PyTorch time / this time"
    )
    for part, by_name in results.items():
        ref = statistics.median(by_name["pytorch fp32 (reference)"])
        print(f"\n{part:8s} {'runtime':28s} {'median ms':>10s} {'p90 ms':>8s} {'speed-up':>9s}")
        for name, times in by_name.items():
            med = statistics.median(times)
            p90 = sorted(times)[max(0, round(0.9 * len(times)) - 1)]
            summary["results"].setdefault(part, {})[name] = {
                "median_ms": med,
                "p90_ms": p90,
                "speedup_vs_pytorch": ref / med,
                "samples_ms": times,
            }
            print(f"{'':8s} {name:28s} {med:10.1f} {p90:8.1f} {ref / med:8.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
