"""The suite's targets: each one judged on a run's results, and the table the suite prints."""

from __future__ import annotations

MIB = 1024 * 1024


def targets(r: dict) -> list[dict]:
    rows = [
        (
            "encoder images/s through Triton >= 2.0x PyTorch fp32",
            r["encoder"]["ratio"] >= 2.0,
            f"{r['encoder']['ours_images_per_s']:.3f} vs "
            f"{r['encoder']['reference_images_per_s']:.3f} img/s = {r['encoder']['ratio']:.2f}x",
        ),
        (
            "reduced precision: mask IoU vs fp32 PyTorch >= 0.98",
            r["agreement"]["min_iou"] >= 0.98,
            f"min {r['agreement']['min_iou']:.4f}, mean "
            f"{r['agreement']['mean_iou']:.4f} over {r['agreement']['masks']} masks",
        ),
        (
            "bytes frontend<->Triton per cached prompt <= 1.5 MiB",
            r["wire"]["cached_prompt_bytes"] <= 1.5 * MIB,
            f"{r['wire']['cached_prompt_bytes'] / MIB:.3f} MiB",
        ),
        (
            "bytes frontend<->Triton per new image <= file + 2 MiB",
            r["wire"]["new_image_bytes"] <= r["wire"]["file_bytes"] + 2 * MIB,
            f"{r['wire']['new_image_bytes'] / MIB:.2f} MiB for a {r['wire']['file_bytes'] / MIB:.2f} MiB file",
        ),
        (
            "decoder prompts/s at c=8 through Triton >= 1.5x PyTorch in-process",
            r["prompts_c8"]["ratio"] >= 1.5,
            f"{r['prompts_c8']['prompts_per_s']:.1f} vs {r['prompts_c8']['reference_prompts_per_s']:.1f} "
            f"prompts/s = {r['prompts_c8']['ratio']:.2f}x (p50 {r['prompts_c8']['p50_ms']:.0f} ms)",
        ),
        (
            "cached prompts >= 1.5x faster than PyTorch in-process (c=1 p50)",
            r["cached_c1"]["ratio"] >= 1.5,
            f"{r['cached_c1']['ratio']:.2f}x",
        ),
        (
            "cached prompt over plain gRPC, c=1: p50 <= 45 ms",
            r["cached_c1"]["ours_p50_ms"] <= 45,
            f"p50 {r['cached_c1']['ours_p50_ms']:.1f} ms (reference "
            f"{r['cached_c1']['reference_p50_ms']:.1f} ms, {r['cached_c1']['ratio']:.2f}x)",
        ),
        (
            "cached image c=1: p99 <= 150 ms",
            r["cached_c1"]["ours_p99_ms"] <= 150,
            f"p99 {r['cached_c1']['ours_p99_ms']:.1f} ms",
        ),
        (
            "c=8 distinct: REST >= 0.9x encoder-only throughput",
            r["concurrent_c8"]["overhead_ratio"] >= 0.9,
            f"{r['concurrent_c8']['rest_images_per_s']:.3f} vs "
            f"{r['concurrent_c8']['encoder_only_images_per_s']:.3f} img/s = "
            f"{r['concurrent_c8']['overhead_ratio']:.3f} (reference "
            f"{r['concurrent_c8']['reference_images_per_s']:.3f} img/s)",
        ),
        (
            "c=8 distinct: no request errors",
            not r["concurrent_c8"]["errors"],
            str(r["concurrent_c8"]["errors"] or "none"),
        ),
        (
            "c=8 distinct: event-loop lag p99 <= 50 ms",
            r["concurrent_c8"]["event_loop_lag_p99_le_s"] <= 0.05,
            f"p99 <= {1000 * r['concurrent_c8']['event_loop_lag_p99_le_s']:.0f} ms",
        ),
        (
            "batch: wall <= 1.1 x N x single-image encoder time",
            r["batch"]["ratio_to_bound"] <= 1.1 and r["batch"]["completed"] == r["batch"]["images"],
            f"{r['batch']['images']} images in {r['batch']['wall_s']:.1f} s vs "
            f"{r['batch']['bound_s']:.1f} s = {r['batch']['ratio_to_bound']:.3f}"
            f" (reference {r['batch']['reference_wall_s']:.1f} s)",
        ),
        (
            "memory: frontend RSS growth < 50 MB",
            r["memory"]["growth_mb"] < 50,
            f"{r['memory']['rss_before_mb']:.0f} -> {r['memory']['rss_after_mb']:.0f} "
            f"MB over {r['memory']['requests']} requests",
        ),
        (
            "memory: the session store within its bound",
            r["memory"]["cache_bytes"] <= r["memory"]["cache_limit_bytes"],
            f"{r['memory']['cache_bytes'] / MIB:.0f} MiB of {r['memory']['cache_limit_bytes'] / MIB:.0f} MiB "
            f"({r['memory']['images_per_gib']:.0f} images per GiB)",
        ),
    ]
    for per_side, e in r["everything"].items():
        rows.append(
            (
                f"segment-everything, {per_side} points per side: faster than Meta's generator (PyTorch)",
                e["ratio"] >= 1.0,
                f"{e['ours_s']:.2f} vs {e['reference_s']:.2f} s per {e['image']} image = {e['ratio']:.2f}x",
            )
        )
    return [{"target": t, "met": bool(ok), "measured": m} for t, ok, m in rows]


def table(results: dict) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    lines += [
        f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |" for row in results["targets"]
    ]
    return "\n".join(lines)
