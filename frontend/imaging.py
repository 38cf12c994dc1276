"""Pure image functions of the frontend (numpy/Pillow): checking and decoding uploads
(``maskserve.core.images`` reads them exactly as the model tier does), SAM 2's
post-processing, feathering, compositing, encoding. No HTTP, no I/O besides
bytes in and out. Everything here is CPU-bound and runs in an executor."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from zlib_ng import zlib_ng

from maskserve.core.images import ImageRejected, has_alpha, open_oriented, probe
from maskserve.core.masks import region_window, upsample_logits
from maskserve.core.signatures import IMAGE_SIZE
from maskserve.frontend.domain.requests import ExtractionOptions

OUTPUT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MASK_PNG_LEVEL = 1  # with the run-length strategy the level hardly changes size or time
PARALLEL_DEFLATE_BYTES = 1 << 20  # masks above this (about 1 MP) are deflated in two halves at once
JPEG_QUALITY = 95
SCRATCH_PIXELS = 3840 * 2160
"""Images up to this size reuse each thread's scratch buffers: fresh multi-MiB arrays cost page faults."""

_scratch = threading.local()


def _scratch_array(name: str, shape: tuple[int, int], dtype: type[np.generic]) -> np.ndarray:
    """A per-thread buffer of ``shape`` (its contents undefined), kept for the next call when small enough."""
    size = shape[0] * shape[1]
    if size > SCRATCH_PIXELS:
        return np.empty(shape, dtype)
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(SCRATCH_PIXELS, dtype)
        setattr(_scratch, name, buf)
    return buf[:size].reshape(shape)


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # H x W x 3 uint8, EXIF orientation applied
    alpha: np.ndarray | None  # H x W uint8 when the file had transparency
    format: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def probe_image(data: bytes, max_pixels: int, what: str = "image") -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (the model tier decodes the pixels)."""
    return probe(data, max_pixels, what)


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> DecodedImage:
    """Bytes → oriented RGB (+ alpha), refusing anything outside the contract."""
    img, fmt = open_oriented(data, max_pixels, what)
    alpha = None
    if has_alpha(img):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        rgb = np.asarray(rgba.convert("RGB"))
    else:
        rgb = np.asarray(img.convert("RGB"))
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, format=fmt)


def to_model_frame(coords: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel (x, y) in the oriented image → the 1024×1024 model frame."""
    scale = np.array([IMAGE_SIZE / width, IMAGE_SIZE / height], np.float32)
    return np.asarray(coords, np.float32).reshape(-1, 2) * scale


Window = tuple[slice, slice]
"""Rows and columns of a mask outside which every pixel is 0."""


def mask_and_window(logits: np.ndarray, height: int, width: int, scratch: bool = False) -> tuple[np.ndarray, Window]:
    """The binary mask (uint8 0/255) at the original size, thresholded at 0, and a window that holds it.

    Bilinear interpolation never exceeds its four neighbours, so no pixel is
    white outside the rows and columns the positive low-res logits reach
    (``upsample_region``'s window): a mask whose logits are all at or below 0
    is empty without upsampling, and its box and area are counted in the
    window. The pixels themselves come from the whole image's upsampling, as
    before: an upsampling of the window alone rounds differently near 0.
    With ``scratch`` the mask is this thread's scratch buffer, valid until the
    thread renders its next one (a fresh multi-MiB array costs page faults).
    """
    rows, cols = reach(logits, height, width)
    if not (rows.stop > rows.start and cols.stop > cols.start):
        return np.zeros((height, width), np.uint8), (rows, cols)
    mask = _scratch_array("mask", (height, width), np.uint8) if scratch else np.empty((height, width), np.uint8)
    full = upsample_logits(logits, height, width, out=_scratch_array("logits", (height, width), np.float32))
    np.greater(full, 0.0, out=mask.view(np.bool_))
    mask *= 255
    return mask, (rows, cols)


def reach(logits: np.ndarray, height: int, width: int) -> Window:
    """The rows and columns, at the original size, that positive low-res logits can make white."""
    active = logits > 0.0
    found_rows, found_cols = np.flatnonzero(active.any(axis=1)), np.flatnonzero(active.any(axis=0))
    if not len(found_rows):
        return slice(0, 0), slice(0, 0)
    if height < logits.shape[0] or width < logits.shape[1]:
        return slice(0, height), slice(0, width)
    r0, r1 = region_window(int(found_rows[0]), int(found_rows[-1]), logits.shape[0], height)
    c0, c1 = region_window(int(found_cols[0]), int(found_cols[-1]), logits.shape[1], width)
    return slice(r0, r1), slice(c0, c1)


def mask_from_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The binary mask (uint8 0/255) at the original size, thresholded at 0."""
    return mask_and_window(logits, height, width)[0]


def mask_iou(a: np.ndarray, b: np.ndarray, height: int, width: int) -> float:
    """IoU of the binary masks two versions' logits give at the image's size (1.0 when both are empty)."""
    mask_a = upsample_logits(a, height, width) > 0.0
    mask_b = upsample_logits(b, height, width) > 0.0
    union = int(np.count_nonzero(mask_a | mask_b))
    return 1.0 if union == 0 else int(np.count_nonzero(mask_a & mask_b)) / union


def decode_mask(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    """An uploaded mask (any PNG/JPEG/WebP mode) → uint8 alpha, white = keep.

    Soft grayscale is kept as soft alpha. A mask with its own transparency is
    read as luminance times its alpha, so transparent areas are removed.
    """
    img, _ = open_oriented(data, max_pixels, "mask")
    if img.size != (width, height):
        raise ImageRejected(
            "mask", f"mask is {img.size[0]}x{img.size[1]} but the image is {width}x{height}; sizes must match"
        )
    if has_alpha(img):
        rgba = img.convert("RGBA")
        lum = np.asarray(rgba.convert("L"), np.uint16)
        return (lum * np.asarray(rgba.getchannel("A"), np.uint16) // 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(img.convert("L")))


def feather(alpha: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the alpha edge over about ``pixels`` px on each side (Gaussian, sigma = pixels/3)."""
    if pixels <= 0:
        return alpha
    blurred = Image.fromarray(alpha, "L").filter(ImageFilter.GaussianBlur(radius=pixels / 3.0))
    return np.asarray(blurred)


def cutout(image: DecodedImage, alpha: np.ndarray) -> Image.Image:
    """The input's pixels with ``alpha`` (times the input's own alpha), transparent elsewhere."""
    if image.alpha is not None:
        alpha = (alpha.astype(np.uint16) * image.alpha // 255).astype(np.uint8)
    rgba = np.dstack([image.rgb, alpha])
    rgba[alpha == 0, :3] = 0  # nothing hidden under fully transparent pixels
    return Image.fromarray(rgba, "RGBA")


class NothingToCrop(ValueError):
    """``crop=true`` on a mask with no kept pixel."""


def crop_box(alpha: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive: the nonzero pixels' bounding box grown by ``margin`` on every side."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        raise NothingToCrop("the mask is empty: there is nothing to crop to")
    return int(cols[0]) - margin, int(rows[0]) - margin, int(cols[-1]) + 1 + margin, int(rows[-1]) + 1 + margin


def _window(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` where the box may reach past the edges: zeros there."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0, *array.shape[2:]), array.dtype)
    height, width = array.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def styled_cutout(image: DecodedImage, alpha: np.ndarray, style: ExtractionOptions) -> Image.Image:
    """The cut-out (``cutout``), then cropped, put on its background colour, or reduced to its alpha."""
    if image.alpha is not None:
        alpha = (alpha.astype(np.uint16) * image.alpha // 255).astype(np.uint8)
    rgb = image.rgb
    if style.crop:
        box = crop_box(alpha, style.crop_margin)
        rgb, alpha = _window(rgb, box), _window(alpha, box)
    if style.channels == "alpha":
        return Image.fromarray(np.ascontiguousarray(alpha), "L")
    background = style.background
    if background is None:
        return cutout(DecodedImage(np.ascontiguousarray(rgb), None, image.format), alpha)
    a = alpha.astype(np.float32)[..., None] / 255.0
    colour = np.array(background[:3], np.float32)
    under = background[3] / 255.0 * (1.0 - a)  # how much background shows through
    out_alpha = a + under
    blended = (rgb.astype(np.float32) * a + colour * under) / np.maximum(out_alpha, 1e-6)
    pixels = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if background[3] == 255:
        return Image.fromarray(pixels, "RGB")
    out_a = np.clip(np.rint(out_alpha[..., 0] * 255.0), 0, 255).astype(np.uint8)
    pixels[out_a == 0] = 0
    return Image.fromarray(np.dstack([pixels, out_a]), "RGBA")


DEFLATE: Any = zlib_ng
"""The deflate of mask PNGs: zlib-ng, zlib's SIMD successor with the same API and the same run-length
output, 2x (noise) to 9x (a real shape) faster than the standard library's zlib on a 1080p mask
(benchmarks/README.md, "The serving path's own cost"); ``zlib`` itself still works here."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", DEFLATE.crc32(kind + data))


def _deflate(data: memoryview, last: bool) -> bytes:
    """Raw deflate of one part of a zlib stream (the GIL is released while it compresses)."""
    deflate = DEFLATE.compressobj(MASK_PNG_LEVEL, DEFLATE.DEFLATED, -15, 9, DEFLATE.Z_RLE)
    return deflate.compress(data) + deflate.flush(DEFLATE.Z_FINISH if last else DEFLATE.Z_SYNC_FLUSH)


def _zlib_stream(data: memoryview) -> bytes:
    """A zlib stream of ``data``, its halves deflated on two threads when it is large.

    A sync flush ends the first half on a byte boundary, so the second half's
    raw deflate follows it as further blocks of the same stream (as pigz
    does); the header and the Adler-32 of the whole frame them.
    """
    if len(data) < PARALLEL_DEFLATE_BYTES:
        parts = [_deflate(data, last=True)]
    else:
        half = len(data) // 2
        second = _deflate_pool().submit(_deflate_as, _niceness(), data[half:])
        parts = [_deflate(data[:half], last=False), second.result()]
    return b"\x78\x01" + b"".join(parts) + struct.pack(">I", DEFLATE.adler32(data))


def _niceness() -> int | None:
    """This thread's niceness (image work runs below the models on shared cores, ``frontend/app.py``)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):
        return None


def _deflate_as(niceness: int | None, data: memoryview) -> bytes:
    """The second half, deflated at the niceness of the thread that asked for it."""
    if niceness is not None and niceness != _niceness():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    return _deflate(data, last=True)


@functools.cache
def _deflate_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, "maskserve-deflate")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A grayscale (8-bit) PNG of ``mask``: rows unfiltered, deflated with the run-length strategy (zlib-ng).

    Masks are runs of 0 and 255: PNG's row filters only cost time on them,
    and run-length deflate finds the runs. Measured at 1920×1080
    (``benchmarks/rendering.py``): 3-7 ms against Pillow's 8-19 ms at its
    fastest level, and smaller files; a large mask's halves are deflated on
    two threads. Every pixel decodes the same.
    """
    height, width = mask.shape
    rows = _scratch_array("png_rows", (height, width + 1), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = mask
    data = _zlib_stream(memoryview(rows.data).cast("B"))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def encode_cutout(img: Image.Image, output_format: str) -> bytes:
    """Lossless PNG or WebP, or JPEG for an opaque result; no metadata (nothing of the input's is passed on)."""
    buf = io.BytesIO()
    if output_format == "png":
        img.save(buf, format="PNG", compress_level=3)
    elif output_format == "webp":
        img.save(buf, format="WEBP", lossless=True, quality=30, method=2, exact=False)
    elif output_format == "jpeg" and img.mode in ("RGB", "L"):
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buf.getvalue()
