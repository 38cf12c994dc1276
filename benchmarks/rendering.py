"""Rendering a mask at the cost of its pixels: each stage measured, and the PNG encoders compared.

    python -m benchmarks.rendering --repeats 15

Two masks at 1920×1080: the noise a random-weights decoder gives (its logits
upsampled as the service does) and a real object's shape (a filled polygon).
For each: upsampling (the whole image, and only the window the low-res logits
can reach, which rounds differently near 0 and so is not what the service
renders), threshold, and every encoder and setting on offer, each checked to
decode to exactly the same pixels. Medians in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw
from zlib_ng import zlib_ng

from maskserve.core.masks import upsample_logits, upsample_region
from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.frontend import imaging

WIDTH, HEIGHT = 1920, 1080


def noise_logits(seed: int = 0) -> np.ndarray:
    """What SAM 2 with random weights answers: logits with structure at every scale, half above zero."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 4, (16, 16)).astype(np.float32)
    fine = rng.normal(0, 2, (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)).astype(np.float32)
    return upsample_logits(coarse, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE) + fine


def object_logits() -> np.ndarray:
    """A real object's logits: positive inside a polygon, negative outside, smooth at the edge."""
    image = Image.new("F", (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), -8.0)
    ImageDraw.Draw(image).polygon([(60, 70), (180, 50), (210, 150), (150, 210), (70, 180)], fill=8.0)
    return np.asarray(image.resize((LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), Image.Resampling.BILINEAR), np.float32)


def _pillow(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(mask: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(mask, "L").save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    return encode


def _opencv(level: int, strategy: int) -> Callable[[np.ndarray], bytes]:
    params = [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_STRATEGY, strategy]

    def encode(mask: np.ndarray) -> bytes:
        ok, data = cv2.imencode(".png", mask, params)
        assert ok
        return data.tobytes()

    return encode


def _one_thread(mask: np.ndarray) -> bytes:
    """The service's PNG with the whole stream deflated on the calling thread (before the two halves)."""
    threshold = imaging.PARALLEL_DEFLATE_BYTES
    imaging.PARALLEL_DEFLATE_BYTES = 1 << 62
    try:
        return imaging.encode_mask_png(mask)
    finally:
        imaging.PARALLEL_DEFLATE_BYTES = threshold


def _stdlib_zlib(encode: Callable[[np.ndarray], bytes]) -> Callable[[np.ndarray], bytes]:
    """``encode`` with the standard library's zlib in place of zlib-ng (the service before)."""

    def with_zlib(mask: np.ndarray) -> bytes:
        imaging.DEFLATE = zlib
        try:
            return encode(mask)
        finally:
            imaging.DEFLATE = zlib_ng

    return with_zlib


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    found = {
        "zlib-ng run-length, rows unfiltered, two halves on two threads (the service)": imaging.encode_mask_png,
        "zlib-ng run-length, rows unfiltered, one thread": _one_thread,
        "zlib run-length, rows unfiltered, two halves on two threads (before)": _stdlib_zlib(imaging.encode_mask_png),
        "zlib run-length, rows unfiltered, one thread": _stdlib_zlib(_one_thread),
        "pillow level 1 (before)": _pillow(1),
        "pillow level 0": _pillow(0),
        "pillow level 3": _pillow(3),
        "opencv level 1, default strategy": _opencv(1, cv2.IMWRITE_PNG_STRATEGY_DEFAULT),
        "opencv level 1, RLE strategy": _opencv(1, cv2.IMWRITE_PNG_STRATEGY_RLE),
        "opencv level 3, RLE strategy": _opencv(3, cv2.IMWRITE_PNG_STRATEGY_RLE),
        "opencv level 1, huffman only": _opencv(1, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY),
    }
    return found


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(name: str, logits: np.ndarray, repeats: int) -> dict:
    full = upsample_logits(logits, HEIGHT, WIDTH)
    mask = np.where(full > 0, 255, 0).astype(np.uint8)
    window, top, left = upsample_region(logits, HEIGHT, WIDTH, 0.0)

    def pillow() -> np.ndarray:  # the service's upsampling before OpenCV's
        return np.asarray(Image.fromarray(logits, "F").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR))

    same = np.array_equal(pillow() > 0, full > 0)
    stages = {
        "upsample, Pillow float bilinear (before)": _median_ms(pillow, repeats),
        "upsample, whole image (OpenCV, the service)": _median_ms(
            lambda: upsample_logits(logits, HEIGHT, WIDTH), repeats
        ),
        "OpenCV's mask == Pillow's, every pixel": str(same),
        "upsample, the reachable window": _median_ms(lambda: upsample_region(logits, HEIGHT, WIDTH, 0.0), repeats),
        "threshold (before: np.where)": _median_ms(lambda: np.where(full > 0, 255, 0).astype(np.uint8), repeats),
        "upsample + threshold in place (the service)": _median_ms(
            lambda: imaging.mask_and_window(logits, HEIGHT, WIDTH), repeats
        ),
        "window": f"{window.shape[1]}x{window.shape[0]} at ({left}, {top})",
    }
    out = {"mask": name, "white": float((mask > 0).mean()), "stages_ms": stages, "encoders": {}}
    for label, encode in encoders().items():
        data = encode(mask)
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        same = decoded.dtype == np.uint8 and decoded.shape == mask.shape and np.array_equal(decoded, mask)
        out["encoders"][label] = {
            "ms": _median_ms(lambda encode=encode: encode(mask), repeats),
            "bytes": len(data),
            "same_pixels": bool(same),
            "mode": Image.open(io.BytesIO(data)).mode,
        }
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| mask | encoder | median ms | bytes | decodes to the same L pixels |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in results:
        for label, e in r["encoders"].items():
            same = "yes" if e["same_pixels"] and e["mode"] == "L" else f"no ({e['mode']})"
            lines.append(f"| {r['mask']} | {label} | {e['ms']:.1f} | {e['bytes']:,} | {same} |")
    lines += ["", "| mask | stage | median ms |", "| --- | --- | ---: |"]
    for r in results:
        for stage, value in r["stages_ms"].items():
            shown = f"{value:.1f}" if isinstance(value, float) else value
            lines.append(f"| {r['mask']} | {stage} | {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/rendering.json"))
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # the service renders on executor threads: one core each
    results = [measure("noise (random weights)", noise_logits(), args.repeats)]
    results.append(measure("an object (filled polygon)", object_logits(), args.repeats))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
