"""Segment-everything: SAM's automatic mask generation, step for step, without torch.

The steps and their order are those of ``sam2.automatic_mask_generator``
(one crop layer, the whole image): a grid of single-point prompts, three
candidate masks per point, a predicted-IoU filter, a stability filter on the
full-size logits, box non-maximum suppression by predicted IoU; then the
optional small-region cleanup with a second suppression that prefers masks it
did not change. The model tier runs everything up to the first suppression
(next to the embeddings, answering with compact RLE); the frontend runs the
cleanup, the ordering and the limits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from maskserve.core import encodings
from maskserve.core.masks import upsample_region

MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0
BOX_NMS_THRESH = 0.7


def point_grid(per_side: int) -> np.ndarray:
    """[per_side², 2] points in [0, 1]², x fastest, half a step from the edges (SAM's grid)."""
    offset = 1.0 / (2 * per_side)
    side = np.linspace(offset, 1 - offset, per_side)
    xs = np.tile(side[None, :], (per_side, 1))
    ys = np.tile(side[:, None], (1, per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``x1, y1, x2, y2`` box with many (areas as (x2 - x1) * (y2 - y1), torchvision's)."""
    left = np.maximum(box[0], boxes[:, 0])
    top = np.maximum(box[1], boxes[:, 1])
    right = np.minimum(box[2], boxes[:, 2])
    bottom = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_one = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area_one + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = list(np.argsort(-np.asarray(scores, np.float64), kind="stable"))
    boxes = np.asarray(boxes, np.float64)
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            rest = np.array(order)
            order = [int(i) for i in rest[box_iou(boxes[best], boxes[rest]) <= iou_thresh]]
    return keep


@dataclass
class Candidate:
    """One mask that passed the filters: RLE at the image's size, its box (x1, y1, x2, y2 inclusive) and scores."""

    rle: dict[str, Any]
    box: list[int]
    score: float
    stability: float
    prompt: int  # index of the grid point that produced it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        return cls(data["rle"], list(data["box"]), float(data["score"]), float(data["stability"]), int(data["prompt"]))


def candidates(
    low_res: np.ndarray,
    iou: np.ndarray,
    first_prompt: int,
    height: int,
    width: int,
    pred_iou_thresh: float,
    stability_thresh: float,
) -> list[Candidate]:
    """A decoder batch's multimask outputs ([k, 3, 256, 256] logits, [k, 3] IoU) → the masks that pass.

    The predicted-IoU filter first (it costs nothing), then the stability score
    at the image's size: the IoU of the masks thresholded at +1 and -1. A
    threshold of 0 filters nothing, as in the generator.
    """
    found = []
    passing = iou > pred_iou_thresh if pred_iou_thresh > 0 else np.ones(iou.shape, bool)
    for index in zip(*np.nonzero(passing), strict=True):
        point, token = int(index[0]), int(index[1])
        window, top, left = upsample_region(low_res[point, token], height, width, MASK_THRESHOLD - STABILITY_OFFSET)
        outer = int(np.count_nonzero(window > MASK_THRESHOLD - STABILITY_OFFSET))
        inner = int(np.count_nonzero(window > MASK_THRESHOLD + STABILITY_OFFSET))
        if not outer:  # nothing above -1: no mask at any threshold (the generator's 0/0)
            continue
        stability = inner / outer
        if stability_thresh > 0 and stability < stability_thresh:
            continue
        mask = np.zeros((height, width), np.uint8)
        mask[top : top + window.shape[0], left : left + window.shape[1]] = window > MASK_THRESHOLD
        found.append(
            Candidate(
                encodings.rle_encode(mask), _xyxy(mask), float(iou[point, token]), stability, first_prompt + point
            )
        )
    return found


def _xyxy(mask: np.ndarray) -> list[int]:
    """The mask's box as ``x1, y1, x2, y2`` with inclusive corners; zeros when empty (``batched_mask_to_box``)."""
    box = encodings.bbox(mask)
    return [0, 0, 0, 0] if box is None else [box[0], box[1], box[0] + box[2] - 1, box[1] + box[3] - 1]


def suppress(found: list[Candidate], iou_thresh: float = BOX_NMS_THRESH) -> list[Candidate]:
    """Box NMS by predicted IoU (the generator's per-crop step)."""
    if not found:
        return []
    keep = box_nms(np.array([c.box for c in found], np.float64), np.array([c.score for c in found]), iou_thresh)
    return [found[i] for i in keep]


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) under ``min_area`` px; and whether it changed."""
    fill_holes = mode == "holes"
    working = (fill_holes ^ mask).astype(np.uint8)
    count, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = [i + 1 for i, size in enumerate(sizes) if size < min_area]
    if not small:
        return mask, False
    labels = [0, *small]
    if not fill_holes:
        labels = [i for i in range(count) if i not in labels] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, labels), True


@dataclass
class Final:
    """A mask of the answer, at the image's size."""

    mask: np.ndarray
    rle: dict[str, Any]
    score: float
    stability: float
    prompt: int


def clean_up(found: list[Candidate], min_area: int, iou_thresh: float = BOX_NMS_THRESH) -> list[Final]:
    """Decode the model tier's masks; with ``min_area``, remove small holes and islands, then NMS again.

    The second suppression scores unchanged masks 1 and changed ones 0, so it
    prefers masks the cleanup left alone (the generator's rule).
    """
    masks = [encodings.rle_decode(c.rle) for c in found]
    if min_area <= 0 or not found:
        return [Final(m, c.rle, c.score, c.stability, c.prompt) for m, c in zip(masks, found, strict=True)]
    cleaned, scores, boxes = [], [], []
    for mask in masks:
        mask, holes = remove_small_regions(mask, min_area, "holes")
        mask, islands = remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        scores.append(0.0 if holes or islands else 1.0)
        boxes.append(_xyxy(mask))
    keep = box_nms(np.array(boxes, np.float64), np.array(scores), iou_thresh)
    out = []
    for i in keep:
        c = found[i]
        rle = c.rle if scores[i] == 1.0 else encodings.rle_encode(cleaned[i])
        out.append(Final(cleaned[i], rle, c.score, c.stability, c.prompt))
    return out


def label_map(masks: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """8-bit labels: mask ``i`` (largest first) paints ``i + 1``; later (smaller) masks win where they overlap."""
    labels = np.zeros((height, width), np.uint8)
    for i, mask in enumerate(masks):
        labels[mask] = i + 1
    return labels
