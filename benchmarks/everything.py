"""Segment-everything: wall time per image through the REST API vs Meta's ``SAM2AutomaticMaskGenerator``.

Both sides start from the encoded file and include the encoder: each of our
runs posts an image the model tier has not seen, and the generator's
``generate`` runs ``set_image`` first. Same random weights, the same grid, the
API's default filters on both (predicted IoU 0.8, stability 0.92, box NMS 0.7);
the generator runs fp32 PyTorch on 2 threads with 64 points per batch (its
default), the way a user would run it in-process.

    python -m benchmarks.everything              # 16 and 32 points per side, one image size
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import requests
from PIL import Image

from benchmarks.images import photo

WIDTH, HEIGHT = 1280, 720
PATH = "/v1/services/image-segmentation/everything"


def ours(url: str, key: str, data: bytes, per_side: int) -> tuple[float, int]:
    started = time.perf_counter()
    r = requests.post(
        f"{url}{PATH}",
        params={"points_per_side": str(per_side)},
        files={"file": ("e.jpg", data, "image/jpeg")},
        headers={"Authorization": f"Bearer {key}"},
        timeout=1800,
    )
    wall = time.perf_counter() - started
    r.raise_for_status()
    return wall, len(r.json()["result"]["masks"])


def theirs(model, data: bytes, per_side: int) -> tuple[float, int]:
    from maskserve.devtools.torchvision_standin import meta_mask_generator

    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    generator = meta_mask_generator(
        model, points_per_side=per_side, pred_iou_thresh=0.8, stability_score_thresh=0.92, box_nms_thresh=0.7
    )
    started = time.perf_counter()
    masks = generator.generate(rgb)
    return time.perf_counter() - started, len(masks)


def measure(url: str, key: str, model, per_sides: tuple[int, ...], runs: int, seed: int = 5000) -> dict:
    """Per grid size: the medians of ``runs`` images on each side and their ratio (reference / ours)."""
    out = {}
    for per_side in per_sides:
        images = [photo(seed + per_side * 100 + i, WIDTH, HEIGHT) for i in range(runs)]
        mine = [ours(url, key, d, per_side) for d in images]
        ref = [theirs(model, d, per_side) for d in images]
        ours_s = statistics.median(w for w, _ in mine)
        ref_s = statistics.median(w for w, _ in ref)
        out[str(per_side)] = {
            "image": f"{WIDTH}x{HEIGHT}",
            "runs": runs,
            "ours_s": ours_s,
            "reference_s": ref_s,
            "ratio": ref_s / ours_s,
            "ours_masks": [n for _, n in mine],
            "reference_masks": [n for _, n in ref],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.reference import TorchPeer
    from benchmarks.stack import running_stack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-side", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    peer = TorchPeer()
    with running_stack() as stack:
        figures = measure(stack.url, stack.key, peer.model, tuple(args.per_side), args.runs)
    for per_side, f in figures.items():
        print(
            f"points_per_side {per_side}: ours {f['ours_s']:.2f} s, reference {f['reference_s']:.2f} s, "
            f"{f['ratio']:.2f}x ({f['image']}, median of {f['runs']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
