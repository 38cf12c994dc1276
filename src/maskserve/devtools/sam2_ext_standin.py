"""A test-only stand-in for SAM 2's CUDA extension (``sam2._C``), so that Meta's video predictor fills holes.

``SAM2VideoPredictor`` fills holes of up to ``fill_hole_area`` pixels in every mask it keeps, with
connected components from its CUDA extension; without the extension (any CPU install) it warns and
skips the step. The parity tests install this stand-in while Meta's predictor runs, so the
reference is Meta's code doing what it does on a GPU; only the extension's one function is written
here, after its documented behaviour: ``get_connected_componnets`` (sic) of an (N, 1, H, W) uint8
mask gives each foreground pixel its 8-connected component's label and area, 0 elsewhere.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import torch

CALLS = {"masks": 0, "with_small_regions": 0}
"""What the stand-in saw while installed: masks labelled, and those with a region of at most 8 px."""


def get_connected_componnets(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = mask.detach().cpu().numpy().astype(np.uint8)
    labels = np.zeros(batch.shape, np.int32)
    counts = np.zeros(batch.shape, np.int32)
    for i in range(batch.shape[0]):
        _, regions, stats, _ = cv2.connectedComponentsWithStats(batch[i, 0], connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        areas[0] = 0  # the background (label 0) has no area
        labels[i, 0], counts[i, 0] = regions, areas[regions]
        CALLS["masks"] += 1
        CALLS["with_small_regions"] += int(bool((areas[1:] <= 8).any()))
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


@contextmanager
def installed() -> Iterator[dict[str, int]]:
    """``sam2._C`` while the block runs; yields ``CALLS`` (reset)."""
    import sam2

    module = types.ModuleType("sam2._C")
    module.get_connected_componnets = get_connected_componnets  # type: ignore[attr-defined]
    previous = sys.modules.get("sam2._C")
    sys.modules["sam2._C"] = module
    sam2._C = module
    CALLS.update(masks=0, with_small_regions=0)
    try:
        yield CALLS
    finally:
        del sam2._C
        if previous is None:
            sys.modules.pop("sam2._C", None)
        else:
            sys.modules["sam2._C"] = previous
