"""Benchmark inputs: photo-like 1920x1080 JPEGs, distinct per seed."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(seed: int, width: int = 1920, height: int = 1080) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 20, width // 20, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photos(count: int, first_seed: int = 1000) -> list[bytes]:
    return [photo(first_seed + i) for i in range(count)]
