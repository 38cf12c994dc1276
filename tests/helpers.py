"""Test inputs shared by several test modules."""

from __future__ import annotations

import numpy as np


def make_image(height: int = 1024, width: int = 1024, seed: int = 1) -> np.ndarray:
    """A deterministic picture with structure (shapes on a gradient), normalised as SAM 2 does."""
    from maskserve.signatures import PIXEL_MEAN, PIXEL_STD

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 * np.ones_like(xx)], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, rng.uniform(60, 200)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        rgb[inside] = rng.uniform(0, 1, 3)
    rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    norm = (np.clip(rgb, 0, 1) - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    return norm.transpose(2, 0, 1)[None].astype(np.float32)
