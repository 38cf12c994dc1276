"""Pure image functions (numpy/Pillow): decoding with limits, SAM 2's pre- and
post-processing, feathering, compositing, encoding. No HTTP, no I/O besides
bytes in and out. Everything here is CPU-bound and runs in an executor."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from maskserve.core.signatures import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from maskserve.frontend.errors import ImageRejected

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
OUTPUT_TYPES = {"png": "image/png", "webp": "image/webp"}


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


def _open(data: bytes, max_pixels: int, what: str) -> Image.Image:
    if not data:
        raise ImageRejected(what, f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise ImageRejected(what, f"{what} is not a JPEG, PNG or WebP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(what, f"{what} exceeds the pixel limit", too_large=True) from None
    except Exception as exc:  # Pillow raises many types on a broken header
        raise ImageRejected(what, f"{what} could not be read: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(what, f"{what} has no pixels")
    if width * height > max_pixels:
        raise ImageRejected(what, f"{what} has {width}x{height} pixels, over the limit of {max_pixels}", too_large=True)
    if getattr(img, "n_frames", 1) > 1:
        raise ImageRejected(what, f"{what} is animated; send a still image")
    try:
        img.load()
    except Exception as exc:
        raise ImageRejected(what, f"{what} is truncated or corrupt: {exc}") from None
    return img


def probe_image(data: bytes, max_pixels: int, what: str = "image") -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only.

    Used when the image's embeddings are already cached: those exact bytes were
    fully decoded and checked when they were first seen.
    """
    img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(what, f"{what} exceeds the pixel limit", too_large=True)
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale scaled to 8 bits (Pillow's convert would clip)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8), "L")
    return img


def _open_oriented(data: bytes, max_pixels: int, what: str) -> tuple[Image.Image, str]:
    """Checked open, EXIF orientation applied, at most 8 bits per channel; and the format."""
    img = _open(data, max_pixels, what)
    fmt = img.format or ""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost the image
        pass
    return _to_8bit(img), fmt


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> DecodedImage:
    """Bytes → oriented RGB (+ alpha), refusing anything outside the contract."""
    img, fmt = _open_oriented(data, max_pixels, what)
    alpha = None
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        rgb = np.asarray(rgba.convert("RGB"))
    else:
        rgb = np.asarray(img.convert("RGB"))
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, format=fmt)


_SCALE = 1.0 / (255.0 * np.array(PIXEL_STD, np.float32))
_SHIFT = np.array(PIXEL_MEAN, np.float32) / np.array(PIXEL_STD, np.float32)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """SAM 2's transform: resize to 1024² (antialiased bilinear), to [0, 1], normalise.

    The predictor resizes in float (ToTensor → Resize → Normalize); we resize
    the 8-bit image with Pillow's same antialiased bilinear kernel (torchvision's
    was ported from it) and normalise after, which is 2.6x faster on this CPU.
    The only difference is the resized pixels' rounding to 8 bits: at most one
    grey level (0.0175 after normalisation; mean 0.005), far below JPEG noise,
    and the benchmark suite checks the end-to-end masks against PyTorch.
    """
    resized = np.asarray(Image.fromarray(rgb, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
    out = np.empty((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for c in range(3):
        np.multiply(resized[:, :, c], _SCALE[c], out=out[0, c], casting="unsafe")
        out[0, c] -= _SHIFT[c]
    return out


def to_model_frame(coords: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel (x, y) in the oriented image → the 1024×1024 model frame."""
    scale = np.array([IMAGE_SIZE / width, IMAGE_SIZE / height], np.float32)
    return np.asarray(coords, np.float32).reshape(-1, 2) * scale


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


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Low-res logits → original size, as the predictor's ``F.interpolate(bilinear)``.

    Enlarging (the usual case) uses Pillow's bilinear filter on a float image:
    the same half-pixel interpolation, about twice as fast as matrices. Pillow
    widens its kernel when reducing and PyTorch does not, so images smaller
    than the logits on either side use explicit interpolation matrices.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if height >= logits.shape[0] and width >= logits.shape[1]:
        return np.asarray(Image.fromarray(logits, "F").resize((width, height), Image.Resampling.BILINEAR))
    return _interp_matrix(height, logits.shape[0]) @ logits @ _interp_matrix(width, logits.shape[1]).T


def mask_from_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The binary mask (uint8 0/255) at the original size, thresholded at 0."""
    return np.where(upsample_logits(logits, height, width) > 0.0, 255, 0).astype(np.uint8)


def decode_mask(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    """An uploaded mask (any PNG/JPEG/WebP mode) → uint8 alpha, white = keep.

    Soft grayscale is kept as soft alpha. A mask with its own transparency is
    read as luminance times its alpha, so transparent areas are removed.
    """
    img, _ = _open_oriented(data, max_pixels, "mask")
    if img.size != (width, height):
        raise ImageRejected(
            "mask", f"mask is {img.size[0]}x{img.size[1]} but the image is {width}x{height}; sizes must match"
        )
    if _has_alpha(img):
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


def encode_mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # level 1: masks from random weights are noise, where level 3 costs 35 % more time
    Image.fromarray(mask, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_cutout(img: Image.Image, output_format: str) -> bytes:
    """Lossless PNG or lossless WebP, no metadata (nothing of the input's is passed on)."""
    buf = io.BytesIO()
    if output_format == "png":
        img.save(buf, format="PNG", compress_level=3)
    elif output_format == "webp":
        img.save(buf, format="WEBP", lossless=True, quality=30, method=2, exact=False)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buf.getvalue()
