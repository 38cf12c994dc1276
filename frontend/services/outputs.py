"""What a job keeps from the model tier's answer: its output image, further files and the result's JSON extras.

Pure CPU work (run in an executor): masks at the image's size from the
low-res logits, the union of several objects, inline RLE or polygons,
segment-everything's clean-up, ordering and label map. A job's ``details``
hold ``{"result": <extras merged into its result object>, "files": {...}}``;
the files (objects' masks, the logits a refinement reuses) live in the output
storage next to the output and expire with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskserve.core import encodings, everything
from maskserve.frontend import imaging
from maskserve.frontend.domain import EverythingJob


@dataclass
class Rendered:
    data: bytes  # the output image
    extension: str
    result: dict[str, Any] = field(default_factory=dict)  # public extras of the result object
    objects: list[bytes] = field(default_factory=list)  # each object's mask PNG (``objects`` given)
    logits: bytes | None = None  # the chosen mask's low-res logits, for ``previous_job_id``
    width: int | None = None  # the output's size when it differs from the image's (a cropped cut-out)
    height: int | None = None


def object_masks(logits: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Each prompt object's binary mask (uint8 0/255) at the image's size."""
    return [imaging.mask_from_logits(one, height, width) for one in logits]


def union(masks: list[np.ndarray]) -> np.ndarray:
    out = masks[0].copy()
    for mask in masks[1:]:
        np.maximum(out, mask, out=out)
    return out


def _described(mask: np.ndarray, score: float, mask_format: str) -> dict[str, Any]:
    white = mask > 0
    found: dict[str, Any] = {
        "score": round(float(score), 6),
        "bbox": encodings.bbox(white),
        "area": encodings.area(white),
    }
    inline = encodings.inline(white, mask_format)
    if inline is not None:
        found["mask"] = inline
    return found


def render_segmentation(
    logits: np.ndarray, scores: list[float], height: int, width: int, several: bool, mask_format: str
) -> Rendered:
    """The mask PNG (the union when ``objects`` were given), its extras, and each object's mask.

    With several objects the top-level ``score`` is the mean of the objects'
    (the union has no prediction of its own).
    """
    masks = object_masks(logits, height, width)
    if not several:
        result = _described(masks[0], scores[0], mask_format)
        raw = np.ascontiguousarray(logits[0], np.float32).tobytes()
        return Rendered(imaging.encode_mask_png(masks[0]), "png", result, logits=raw)
    combined = union(masks)
    result = _described(combined, float(np.mean(scores)), mask_format)
    result["objects"] = [
        {"index": i, **_described(mask, score, mask_format)}
        for i, (mask, score) in enumerate(zip(masks, scores, strict=True))
    ]
    return Rendered(imaging.encode_mask_png(combined), "png", result, [imaging.encode_mask_png(m) for m in masks])


def render_everything(found: list[dict[str, Any]], job: EverythingJob) -> Rendered:
    """The model tier's masks → clean-up, the ``max_masks`` best by predicted IoU, ordered by area; the label map.

    Where masks overlap, the smaller one's label wins (it is painted later).
    """
    opts = job.options
    finals = everything.clean_up([everything.Candidate.from_json(c) for c in found], opts.min_mask_region_area)
    finals = sorted(finals, key=lambda f: -f.score)[: opts.max_masks]
    areas = [encodings.area(f.mask) for f in finals]
    order = sorted(range(len(finals)), key=lambda i: -areas[i])
    labels = everything.label_map([finals[i].mask for i in order], job.height, job.width)
    grid = job.grid()
    masks = []
    for i in order:
        final = finals[i]
        x, y = grid[final.prompt]
        masks.append(
            {
                "mask": encodings.inline_rle(final.rle, opts.mask_format, final.mask),
                "bbox": encodings.bbox(final.mask),
                "area": areas[i],
                "score": round(final.score, 6),
                "stability_score": round(final.stability, 6),
                "point": [round(float(x), 2), round(float(y), 2)],
            }
        )
    return Rendered(imaging.encode_mask_png(labels), "png", {"masks": masks})
