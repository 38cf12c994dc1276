"""Choosing one mask from the decoder's four outputs, as SAM 2's predictor does.

The decoder graph returns all four mask tokens. With ``multimask`` (a single
point and no box) the predictor takes the best of tokens 1..3 by predicted IoU.
Otherwise it takes token 0 unless that mask is unstable, in which case it falls
back to the best multimask candidate (SAM 2's ``dynamic_multimask_via_stability``
with the image predictor's settings).
"""

from __future__ import annotations

import numpy as np

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
