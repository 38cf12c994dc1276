"""What a job keeps from the model tier's answer: its output image, further files and the result's extras.

Pure CPU work (run in an executor): masks at the image's size from the
low-res logits, the union of several objects, inline RLE or polygons,
segment-everything's clean-up, ordering and label map, and the cut-out. The
extras (``ResultExtras``) are merged into the job's result object; the
further files (objects' masks, the logits a refinement reuses) live in the
output storage next to the output and expire with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskserve.core import encodings, everything
from maskserve.core.everything import Candidate
from maskserve.frontend import imaging
from maskserve.frontend.domain.everything import EverythingJob
from maskserve.frontend.domain.jobs import EverythingMask, ResultExtras
from maskserve.frontend.domain.requests import ExtractionOptions
from maskserve.frontend.errors import ValidationFailed


@dataclass
class Rendered:
    data: bytes  # the output image
    extension: str
    result: ResultExtras = field(default_factory=ResultExtras)  # public extras of the result object
    objects: list[bytes] = field(default_factory=list)  # each object's mask PNG (``objects`` given)
    logits: bytes | None = None  # the chosen mask's low-res logits, for ``previous_job_id``
    width: int | None = None  # the output's size when it differs from the image's (a cropped cut-out)
    height: int | None = None


Masked = tuple[np.ndarray, imaging.Window]
"""A binary mask (uint8 0/255) at the image's size, and the window outside which it is black."""


def object_masks(logits: np.ndarray, height: int, width: int) -> list[Masked]:
    """Each prompt object's binary mask at the image's size, with its window."""
    return [imaging.mask_and_window(one, height, width) for one in logits]


def union(masks: list[Masked]) -> Masked:
    out = masks[0][0].copy()
    for mask, _ in masks[1:]:
        np.maximum(out, mask, out=out)
    windows = [w for _, w in masks if w[0].stop > w[0].start and w[1].stop > w[1].start]
    if not windows:
        return out, (slice(0, 0), slice(0, 0))
    rows = slice(min(w[0].start for w in windows), max(w[0].stop for w in windows))
    cols = slice(min(w[1].start for w in windows), max(w[1].stop for w in windows))
    return out, (rows, cols)


def _described(masked: Masked, score: float, mask_format: str) -> dict[str, Any]:
    """Score, box and area (counted in the mask's window, the same as over the whole image), inline mask."""
    mask, (rows, cols) = masked
    inside = mask[rows, cols]  # a view: 0 or 255, counted as it is
    box = encodings.bbox(inside)
    found: dict[str, Any] = {
        "score": round(float(score), 6),
        "bbox": None if box is None else [box[0] + cols.start, box[1] + rows.start, box[2], box[3]],
        "area": encodings.area(inside),
    }
    if mask_format != "png":
        found["mask"] = encodings.inline(mask > 0, mask_format)
    return found


def render_segmentation(
    logits: np.ndarray, scores: list[float], height: int, width: int, several: bool, mask_format: str
) -> Rendered:
    """The mask PNG (the union when ``objects`` were given), its extras, and each object's mask.

    With several objects the top-level ``score`` is the mean of the objects'
    (the union has no prediction of its own).
    """
    if not several:  # the mask lives only until its PNG is written: in this thread's scratch buffer
        masks = [imaging.mask_and_window(logits[0], height, width, scratch=True)]
        result = ResultExtras.model_validate(_described(masks[0], scores[0], mask_format))
        raw = np.ascontiguousarray(logits[0], np.float32).tobytes()
        return Rendered(imaging.encode_mask_png(masks[0][0]), "png", result, logits=raw)
    masks = object_masks(logits, height, width)
    combined = union(masks)
    objects = [
        {"index": i, **_described(mask, score, mask_format)}
        for i, (mask, score) in enumerate(zip(masks, scores, strict=True))
    ]
    result = ResultExtras.model_validate(
        {**_described(combined, float(np.mean(scores)), mask_format), "objects": objects}
    )
    pngs = [imaging.encode_mask_png(mask) for mask, _ in masks]
    return Rendered(imaging.encode_mask_png(combined[0]), "png", result, pngs)


def render_everything(found: list[Candidate], job: EverythingJob) -> Rendered:
    """The model tier's masks → clean-up, the ``max_masks`` best by predicted IoU, ordered by area; the label map.

    Where masks overlap, the smaller one's label wins (it is painted later).
    """
    opts = job.options
    finals = everything.clean_up(found, opts.min_mask_region_area)
    finals = sorted(finals, key=lambda f: -f.score)[: opts.max_masks]
    areas = [encodings.area(f.mask) for f in finals]
    order = sorted(range(len(finals)), key=lambda i: -areas[i])
    labels = everything.label_map([finals[i].mask for i in order], job.height, job.width)
    grid = job.grid()
    masks = []
    for i in order:
        final = finals[i]
        x, y = grid[final.prompt]
        mask = {
            "mask": encodings.inline_rle(final.rle, opts.mask_format, final.mask),
            "bbox": encodings.bbox(final.mask),
            "area": areas[i],
            "score": round(final.score, 6),
            "stability_score": round(final.stability, 6),
            "point": [round(float(x), 2), round(float(y), 2)],
        }
        masks.append(EverythingMask.model_validate(mask))
    return Rendered(imaging.encode_mask_png(labels), "png", ResultExtras(masks=masks))


def render_cutout(
    image: imaging.DecodedImage, logits: np.ndarray | None, mask: np.ndarray | None, opts: ExtractionOptions
) -> Rendered:
    """The cut-out: the objects' union (or the uploaded mask) as alpha, feathered and styled."""
    if logits is not None:
        alpha = union(object_masks(logits, image.height, image.width))[0]
    else:
        assert mask is not None
        alpha = mask
    soft = imaging.feather(alpha, opts.feather)
    try:
        styled = imaging.styled_cutout(image, soft, opts)
    except imaging.NothingToCrop as exc:
        raise ValidationFailed.one("query", "crop", str(exc)) from None
    data = imaging.encode_cutout(styled, opts.output_format)
    return Rendered(data, opts.output_format, width=styled.width, height=styled.height)
