"""Synthetic pictures for tests and benchmarks: deterministic, structured, distinct per seed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from maskserve.core.signatures import PIXEL_MEAN, PIXEL_STD


def make_image(height: int = 1024, width: int = 1024, seed: int = 1) -> np.ndarray:
    """A deterministic picture with structure (shapes on a gradient), normalised as SAM 2 does."""
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


def image_bytes(
    width: int = 640, height: int = 480, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, **save: Any
) -> bytes:
    """An encoded picture: a coloured rectangle on a gradient (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), np.full_like(xx, 90)], -1)
    rgb = rgb.astype(np.uint8)
    rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_mask(width: int, height: int, box: tuple[int, int, int, int], soft: bool = False, mode: str = "L") -> bytes:
    """A white box on black (or a horizontal grey ramp inside the box when ``soft``)."""
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    if soft:
        mask[y1:y2, x1:x2] = np.linspace(1, 254, x2 - x1, dtype=np.uint8)[None, :]
    else:
        mask[y1:y2, x1:x2] = 255
    if mode == "I;16":  # real 16-bit: white is 65535
        img = Image.fromarray(mask.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(mask, "L")
        if mode != "L":
            img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def moving_shapes_clip(where: Path, frames: int = 16, width: int = 320, height: int = 240) -> list[Path]:
    """A synthetic clip as numbered JPEG frames (as SAM 2's video predictor reads a folder): two moving shapes."""
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(frames):
        img = Image.new("RGB", (width, height), (30 + 3 * i % 200, 60, 90))
        draw = ImageDraw.Draw(img)
        x, y = width // 8 + 8 * i % (width // 2), height // 4
        draw.ellipse([x, y, x + width // 4, y + height // 3], fill=(230, 200, 40))
        top = height // 2 - 4 * i % (height // 4)
        draw.rectangle([width * 5 // 8, top, width * 27 // 32, top + height * 7 // 24], fill=(40, 180, 220))
        paths.append(where / f"{i:05d}.jpg")
        img.save(paths[-1], quality=95)
    return paths


def clip_file(frames: list[Path], fmt: str = "mp4", fps: int = 10) -> bytes:
    """The JPEG frames as a video file: ``mp4`` (H.264), ``webm`` (VP9), or an animated ``gif``."""
    import av

    images = [Image.open(p).convert("RGB") for p in frames]
    if fmt == "gif":
        out = io.BytesIO()
        images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
        return out.getvalue()
    codec = {"mp4": "libx264", "webm": "libvpx-vp9"}[fmt]
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = images[0].width, images[0].height, "yuv420p"
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()
