"""Choosing one mask from the decoder's four outputs, as SAM 2's predictor does.

The decoder graph returns all four mask tokens. With ``multimask`` (a single
point and no box) the predictor takes the best of tokens 1..3 by predicted IoU.
Otherwise it takes token 0 unless that mask is unstable, in which case it falls
back to the best multimask candidate (SAM 2's ``dynamic_multimask_via_stability``
with the image predictor's settings).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98


def stability_score(logits: np.ndarray) -> float:
    inner = np.count_nonzero(logits > STABILITY_DELTA)
    outer = np.count_nonzero(logits > -STABILITY_DELTA)
    return float(inner) / float(outer) if outer > 0 else 1.0


def select_mask(low_res_masks: np.ndarray, iou: np.ndarray, multimask: bool) -> tuple[np.ndarray, float]:
    """One image's [4, H, W] logits and [4] scores → the chosen [H, W] logits and score."""
    best = 1 + int(np.argmax(iou[1:]))
    if multimask:
        return low_res_masks[best], float(iou[best])
    if stability_score(low_res_masks[0]) >= STABILITY_THRESH:
        return low_res_masks[0], float(iou[0])
    return low_res_masks[best], float(iou[best])


HOLE_FILL_LOGIT = 0.1
"""What SAM 2's video predictor writes into a filled hole: a small positive score (foreground)."""


def fill_small_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """SAM 2's ``fill_holes_in_mask_scores`` on one [H, W] of logits: every 8-connected background region
    (logits <= 0) of at most ``max_area`` pixels becomes foreground. ``logits`` itself is left as it is."""
    background = (logits <= 0).view(np.uint8)
    _, regions, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] <= max_area) + 1
    if small.size == 0:
        return logits
    filled = np.array(logits, copy=True)
    filled[np.isin(regions, small)] = HOLE_FILL_LOGIT
    return filled


@lru_cache(maxsize=32)
def _interp_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Rows of bilinear weights, half-pixel centres, no antialiasing (PyTorch's)."""
    src = np.clip((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5, 0.0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), hi), frac)
    return matrix


def upsample_logits(logits: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Low-res logits → original size, as the predictor's ``F.interpolate(bilinear)``.

    Enlarging (the usual case) uses OpenCV's bilinear resize of a float image
    (half-pixel centres, as PyTorch and Pillow), written into ``out`` when
    given: 0.4 ms at 1920×1080 against Pillow's 4-15 ms, and its signs (the
    mask) the same as Pillow's on every pixel checked (``tests/unit/test_imaging.py``).
    OpenCV, like Pillow, widens nothing when enlarging; images smaller than
    the logits on either side use explicit interpolation matrices, as
    PyTorch does not antialias.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if height >= logits.shape[0] and width >= logits.shape[1]:
        if out is None:
            return cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(logits, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    return _interp_matrix(height, logits.shape[0]) @ logits @ _interp_matrix(width, logits.shape[1]).T


def upsample_region(logits: np.ndarray, height: int, width: int, above: float) -> tuple[np.ndarray, int, int]:
    """The upsampled logits over the smallest window holding every value above ``above``; and its top-left.

    Bilinear interpolation never exceeds its four neighbours, so outside the
    rows and columns next to a low-res value above ``above`` the full-size
    logits stay at or below it. Segment-everything thresholds hundreds of
    candidate masks at full size; most are small, and this computes only
    their window, with the same values as ``upsample_logits`` there.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    size_y, size_x = logits.shape
    active = logits > above
    rows, cols = np.flatnonzero(active.any(axis=1)), np.flatnonzero(active.any(axis=0))
    if not len(rows):
        return np.zeros((0, 0), np.float32), 0, 0
    r0, r1 = region_window(rows[0], rows[-1], size_y, height)
    c0, c1 = region_window(cols[0], cols[-1], size_x, width)
    if height >= size_y and width >= size_x:
        box = (c0 * size_x / width, r0 * size_y / height, c1 * size_x / width, r1 * size_y / height)
        image = Image.fromarray(logits, "F").resize((c1 - c0, r1 - r0), Image.Resampling.BILINEAR, box=box)
        return np.asarray(image), r0, c0
    window = _interp_matrix(height, size_y)[r0:r1] @ logits @ _interp_matrix(width, size_x)[c0:c1].T
    return window, r0, c0


def region_window(first: int, last: int, size: int, out: int) -> tuple[int, int]:
    """Output indices [start, stop) whose bilinear sources (half-pixel centres) touch low-res ``first..last``."""
    scale = size / out
    start = int(np.floor((first - 1 + 0.5) / scale - 0.5)) - 1
    stop = int(np.ceil((last + 1 + 0.5) / scale - 0.5)) + 2
    return max(start, 0), min(stop, out)
