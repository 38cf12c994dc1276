"""What an interactive client costs the service: one upload, then clicks by ``image_id``; and how much of a
click is the decoder graph's own compute (Triton's statistics for ``sam2_prompt_decoder``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import tritonclient.grpc as grpcclient

from benchmarks.loadgen import run_load
from benchmarks.stack import Stack
from maskserve.core import signatures as sig


@dataclass(frozen=True)
class DecoderStats:
    inferences: int
    compute_ns: int  # compute_infer: the graph itself, without queueing, input or output copies


def decoder_stats(grpc_url: str) -> DecoderStats:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        found = client.get_inference_statistics(sig.served_name(sig.DECODER_MODEL, 1)).model_stats
        return DecoderStats(
            sum(s.inference_count for s in found),
            sum(s.inference_stats.compute_infer.ns for s in found),
        )
    finally:
        client.close()


def compute_ms(before: DecoderStats, after: DecoderStats) -> float:
    """The decoder graph's mean compute per prompt between two readings."""
    count = after.inferences - before.inferences
    return (after.compute_ns - before.compute_ns) / 1e6 / count if count else float("nan")


def clicks(stack: Stack, cached: bytes, kind: str, count: int, concurrency: int) -> dict:
    """``count`` requests of ``kind`` (``cached``: uploaded again; ``click``: by handle) and the decoder's share."""
    before = decoder_stats(stack.grpc_url)
    run = asyncio.run(run_load(stack.url, stack.key, [kind] * count, concurrency, None, [], cached))
    lat = run["latency_ms"][kind]
    decoder = compute_ms(before, decoder_stats(stack.grpc_url))
    return {
        "ours_p50_ms": lat["p50"],
        "ours_p99_ms": lat["p99"],
        "prompts_per_s": run["requests_per_s"],
        "decoder_compute_ms": decoder,
        "overhead_ms": lat["p50"] - decoder,
        "stages_ms": run["stages_ms"].get(kind, {}),
        "errors": run["errors_by_status"],
    }
