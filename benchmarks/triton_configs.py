"""Model-level benchmark: encoder and decoder through Triton across configurations.

For each configuration (runtime, precision, max batch size, instances) it
writes a model repository next to the exported one (same ONNX files, another
``config.pbtxt``), starts Triton on it, and measures from a gRPC client:
encoder images/s and latency percentiles with ``--concurrency`` requests in
flight (each request ``--client-batch`` images where the config allows), and
decoder prompts/s at concurrency 8. The PyTorch fp32 reference (same weights,
same threads, in-process) is measured in the same run and every row prints its
ratio.

    python -m benchmarks.triton_configs --images 6 --json benchmarks/results/triton_configs.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.loadgen import percentile
from benchmarks.stack import export_default
from maskserve.core import signatures as sig
from maskserve.export.repository import (
    CPU_BATCHING,
    CpuRuntime,
    ModelRuntime,
    provenance_of,
    read_manifest,
    render_config,
    version_dir,
)


@dataclass(frozen=True)
class Config:
    name: str
    encoder: ModelRuntime
    decoder: ModelRuntime
    encoder_batch: int = 1
    decoder_batch: int = 8
    encoder_instances: int = 1
    decoder_instances: int = 1
    threads: int = 2


CONFIGS = [
    Config("default: OV bf16 enc, ORT dec", ModelRuntime("openvino", "bf16"), ModelRuntime("onnxruntime", "fp32")),
    Config("OV fp32 enc", ModelRuntime("openvino", "fp32"), ModelRuntime("onnxruntime", "fp32")),
    Config("ORT fp32 enc", ModelRuntime("onnxruntime", "fp32"), ModelRuntime("onnxruntime", "fp32")),
    Config(
        "OV bf16 enc, batch 4", ModelRuntime("openvino", "bf16"), ModelRuntime("onnxruntime", "fp32"), encoder_batch=4
    ),
    Config(
        "OV bf16 enc, 2 instances x 1 thread",
        ModelRuntime("openvino", "bf16"),
        ModelRuntime("onnxruntime", "fp32"),
        encoder_instances=2,
        decoder_instances=2,
        threads=1,
    ),
    Config("OV bf16 dec", ModelRuntime("openvino", "bf16"), ModelRuntime("openvino", "bf16")),
]


def variant_repo(source: Path, config: Config, work: Path) -> Path:
    """Version 1's files (linked), this configuration's config.pbtxt."""
    repo = work / config.name.replace(" ", "_").replace(":", "").replace(",", "")
    cpu = CpuRuntime(encoder=config.encoder, decoder=config.decoder, threads=config.threads)
    for model in sig.SIGNATURES:
        served = repo / sig.served_name(model, 1)
        served.mkdir(parents=True)
        (served / sig.TRITON_VERSION).symlink_to(version_dir(source, model, 1).resolve())
        is_encoder = model == sig.ENCODER_MODEL
        batching = replace(
            CPU_BATCHING[model],
            max_batch_size=config.encoder_batch if is_encoder else config.decoder_batch,
            instances=config.encoder_instances if is_encoder else config.decoder_instances,
        )
        provenance = provenance_of(read_manifest(version_dir(source, model, 1)))
        (served / "config.pbtxt").write_text(render_config(model, 1, "cpu", cpu, provenance, batching))
    return repo


async def _measure(grpc_url: str, images: list[np.ndarray], concurrency: int, client_batch: int) -> dict:
    from benchmarks.graphs import TritonClient
    from benchmarks.suite import encoder_rate
    from maskserve.core.prompts import pack_prompt

    requests_ = [np.concatenate(images[i : i + client_batch]) for i in range(0, len(images), client_batch)]
    rate, latencies = await encoder_rate(grpc_url, requests_, concurrency)
    client = TritonClient(grpc_url, 900, shm_slots=8)
    try:
        emb = await client.encode(images[0])
        coords, labels = pack_prompt(np.array([[400.0, 500.0]]), np.array([1]), None)
        dec_lat: list[float] = []
        prompts = list(range(48))

        async def dworker() -> None:
            while prompts:
                prompts.pop()
                t = time.perf_counter()
                await client.decode(emb, coords, labels)
                dec_lat.append(time.perf_counter() - t)

        await client.decode(emb, coords, labels)
        started = time.perf_counter()
        await asyncio.gather(*(dworker() for _ in range(8)))
        decoder_rate = 48 / (time.perf_counter() - started)
        return {
            "encoder_images_per_s": rate,
            "encoder_request_ms": {q: 1000 * percentile(latencies, q) for q in (50, 95, 99)},
            "decoder_prompts_per_s": decoder_rate,
            "decoder_request_ms": {q: 1000 * percentile(dec_lat, q) for q in (50, 95, 99)},
        }
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, help="an exported repository (default: export tiny, random weights)")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--client-batch", type=int, default=1)
    parser.add_argument("--configs", help="comma-separated indexes into the list (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.reference import TorchPeer
    from maskserve.triton.server import TritonOptions, TritonServer

    work = Path(tempfile.mkdtemp(prefix="maskserve-configs-"))
    source = args.repo or export_default(work)
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((1, 3, 1024, 1024), dtype=np.float32) for _ in range(args.images)]

    peer = TorchPeer(threads=2)
    feats = peer.encode(np.zeros((1024, 1024, 3), np.uint8))
    ref_enc = []
    for x in images[: max(1, args.images // 2)]:
        started = time.perf_counter()
        with torch.no_grad():
            from maskserve.export import reference

            reference.encode(peer.model, torch.from_numpy(x))
        ref_enc.append(time.perf_counter() - started)
    ref_dec = []
    for _ in range(10):
        started = time.perf_counter()
        reference.decode(peer.model, feats, np.array([[400.0, 500.0]]), np.array([1]), None, None, True)
        ref_dec.append(time.perf_counter() - started)
    ref = {
        "encoder_images_per_s": 1 / statistics.median(ref_enc),
        "decoder_prompts_per_s": 1 / statistics.median(ref_dec),
    }

    chosen = CONFIGS if not args.configs else [CONFIGS[int(i)] for i in args.configs.split(",")]
    rows = []
    for config in chosen:
        repo = variant_repo(source, config, work)
        opts = TritonOptions.on_free_ports(
            repo,
            work / "triton",
            models=tuple(
                sig.served_name(m, 1) for m in sig.SIGNATURES
            ),  # the two graphs alone: this harness measures them
        )
        client_batch = min(args.client_batch, config.encoder_batch)
        with TritonServer(opts):
            measured = asyncio.run(_measure(opts.grpc_url, images, args.concurrency, client_batch))
        measured.update(
            config=config.name,
            client_batch=client_batch,
            encoder_ratio=measured["encoder_images_per_s"] / ref["encoder_images_per_s"],
            decoder_ratio=measured["decoder_prompts_per_s"] / ref["decoder_prompts_per_s"],
        )
        rows.append(measured)
        shutil.rmtree(repo, ignore_errors=True)

    print(
        f"PyTorch fp32 reference: encoder {ref['encoder_images_per_s']:.3f} "
        f"img/s, decoder {ref['decoder_prompts_per_s']:.1f} prompts/s"
    )
    print(
        "| configuration | encoder img/s | vs PyTorch | enc p50/p95/p99 "
        "ms | decoder prompts/s | vs PyTorch | dec p50/p95/p99 ms |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | --- |")
    for r in rows:
        e, d = r["encoder_request_ms"], r["decoder_request_ms"]
        print(
            f"| {r['config']} | {r['encoder_images_per_s']:.3f} | "
            f"{r['encoder_ratio']:.2f}x | {e[50]:.0f}/{e[95]:.0f}/{e[99]:.0f} "
            f"| {r['decoder_prompts_per_s']:.1f} | {r['decoder_ratio']:.2f}x | {d[50]:.0f}/{d[95]:.0f}/{d[99]:.0f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "reference": ref,
                    "rows": rows,
                    "concurrency": args.concurrency,
                    "images": args.images,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
