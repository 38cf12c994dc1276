"""A binary mask's box, area and inline encodings: COCO RLE (pycocotools) and polygons (OpenCV).

Shared by the frontend (results, segment-everything) and the model tier
(which answers segment-everything with RLE, so full-size masks never cross the
wire as pixels).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

MASK_FORMATS = ("png", "rle", "polygons")


def area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def bbox(mask: np.ndarray) -> list[int] | None:
    """``[x, y, w, h]`` in whole pixels of the white region (w, h count pixels), None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE (column-major runs), as ``pycocotools.mask.decode`` reads it."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """→ a [height, width] bool mask."""
    counts = rle["counts"]
    raw = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(raw).astype(bool)


def polygons(mask: np.ndarray) -> dict[str, Any]:
    """Outer contours and holes as flat ``[x1, y1, x2, y2, …]`` rings in image pixels.

    OpenCV's two-level contours (``RETR_CCOMP``): vertices are the centres of
    the region's boundary pixels, straight runs kept as their end points.
    Filling each outer ring (edges included) and clearing each hole's inside
    gives the mask back.
    """
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8, copy=False), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer: list[list[int]] = []
    holes: list[list[int]] = []
    for contour, links in zip(contours, hierarchy[0] if hierarchy is not None else [], strict=False):
        ring = [int(v) for v in contour.reshape(-1)]
        (holes if links[3] >= 0 else outer).append(ring)
    return {"format": "polygons", "polygons": outer, "holes": holes}


def inline(mask: np.ndarray, mask_format: str) -> dict[str, Any] | None:
    """The mask as ``mask_format`` asks for it inline (``png``: nothing inline)."""
    if mask_format == "rle":
        return {"format": "rle", **rle_encode(mask)}
    if mask_format == "polygons":
        return polygons(mask)
    return None


def inline_rle(rle: dict[str, Any], mask_format: str, mask: np.ndarray | None = None) -> dict[str, Any]:
    """A mask the model tier sent as RLE, inline as ``mask_format`` (``rle`` or ``polygons``)."""
    if mask_format == "rle":
        return {"format": "rle", "size": list(rle["size"]), "counts": rle["counts"]}
    return polygons(mask if mask is not None else rle_decode(rle))
