"""The suite's targets: each one judged on a run's results, and the table the suite prints."""

from __future__ import annotations

MIB = 1024 * 1024


def _stages(row: dict) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in row["stages_ms"].items()) or "-"


def _click(row: dict) -> str:
    return (
        f"p50 {row['ours_p50_ms']:.1f} ms vs {row['reference_p50_ms']:.1f} ms = {row['ratio']:.2f}x "
        f"(decoder graph {row['decoder_compute_ms']:.1f} ms; stages {_stages(row)})"
    )


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
            "session model alone, c=8: prompts/s >= 1.5x PyTorch in-process",
            r["prompts_c8"]["ratio"] >= 1.5,
            f"{r['prompts_c8']['prompts_per_s']:.1f} vs {r['prompts_c8']['reference_prompts_per_s']:.1f} "
            f"prompts/s = {r['prompts_c8']['ratio']:.2f}x (p50 {r['prompts_c8']['p50_ms']:.0f} ms)",
        ),
        (
            "cached prompt with an upload, c=1: p50 >= 2.0x faster than PyTorch in-process",
            r["cached_c1"]["ratio"] >= 2.0,
            _click(r["cached_c1"]),
        ),
        (
            "cached prompt by image_id, c=1: p50 >= 2.5x faster than PyTorch in-process",
            r["click_c1"]["ratio"] >= 2.5,
            _click(r["click_c1"]),
        ),
        (
            "by image_id: service p50 minus the decoder graph's compute <= 15 ms",
            r["click_c1"]["overhead_ms"] <= 15,
            f"{r['click_c1']['ours_p50_ms']:.1f} - {r['click_c1']['decoder_compute_ms']:.1f} ms = "
            f"{r['click_c1']['overhead_ms']:.1f} ms (stages {_stages(r['click_c1'])})",
        ),
        (
            "cached prompts by image_id at c=8: prompts/s >= 2x PyTorch in-process",
            r["click_c8"]["ratio"] >= 2.0,
            f"{r['click_c8']['prompts_per_s']:.1f} vs {r['click_c8']['reference_prompts_per_s']:.1f} prompts/s = "
            f"{r['click_c8']['ratio']:.2f}x (p50 {r['click_c8']['ours_p50_ms']:.0f} ms)",
        ),
        (
            "cached image c=1: p99 <= 150 ms",
            r["cached_c1"]["ours_p99_ms"] <= 150,
            f"p99 {r['cached_c1']['ours_p99_ms']:.1f} ms (by image_id {r['click_c1']['ours_p99_ms']:.1f} ms)",
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
            "batch: wall <= 1.05 x N x single-image encoder time",
            r["batch"]["ratio_to_bound"] <= 1.05 and r["batch"]["completed"] == r["batch"]["images"],
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
        goal = 4.0 if int(per_side) >= 32 else 1.0
        rows.append(
            (
                f"segment-everything, {per_side} points per side: >= {goal:g}x Meta's generator (PyTorch)",
                e["ratio"] >= goal,
                f"{e['ours_s']:.2f} vs {e['reference_s']:.2f} s per {e['image']} image = {e['ratio']:.2f}x",
            )
        )
    for name, row in sorted((r.get("video") or {}).items()):
        if not name.startswith("objects_"):
            continue
        rows.append(
            (
                f"video, {name.removeprefix('objects_')} object(s): frames/s through the API >= 2x SAM2VideoPredictor",
                row["ratio"] >= 2.0,
                f"{row['ours']['frames_per_s']:.3f} vs {row['reference']['frames_per_s']:.3f} frames/s = "
                f"{row['ratio']:.2f}x; first mask after a click on a new frame {row['ours']['first_mask_s']:.2f} s",
            )
        )
    return [{"target": t, "met": bool(ok), "measured": m} for t, ok, m in rows]


def table(results: dict) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    lines += [
        f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |" for row in results["targets"]
    ]
    return "\n".join(lines)
