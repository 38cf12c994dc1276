"""Unit tests of the pure image functions against SAM 2's own (PyTorch) operations."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskserve.core import images
from maskserve.core.images import ImageRejected
from maskserve.core.signatures import PIXEL_MEAN, PIXEL_STD
from maskserve.devtools.pictures import image_bytes
from maskserve.frontend import imaging
from maskserve.frontend.domain.requests import ExtractionOptions


def _torch_preprocess(rgb: np.ndarray) -> np.ndarray:
    """What SAM2Transforms does: ToTensor, Resize((1024, 1024)) (antialiased bilinear), Normalize."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


@pytest.mark.parametrize("size", [(1080, 1920), (300, 200), (1024, 1024)])
def test_preprocess_matches_sam2_transforms(size):
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    ours = images.preprocess(rgb)
    want = _torch_preprocess(rgb)
    assert ours.shape == (1, 3, 1024, 1024) and ours.dtype == np.float32
    # the resize output is rounded to 8 bits: at most one grey level, 1/255/0.225 after normalising
    assert np.abs(ours - want).max() < 1.05 / 255 / min(PIXEL_STD)
    assert np.abs(ours - want).mean() < 0.01


@pytest.mark.parametrize("size", [(1080, 1920), (100, 60), (256, 256)])
def test_upsample_matches_torch_interpolate(size):
    logits = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    ours = imaging.upsample_logits(logits, *size)
    want = F.interpolate(torch.from_numpy(logits)[None, None], size, mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(ours - want).max() < 5e-4  # float32 index arithmetic differs slightly
    assert np.mean((ours > 0) == (want > 0)) > 0.99999


def test_the_upsampled_mask_is_pillows_pixel_for_pixel():
    """OpenCV's bilinear resize replaced Pillow's float one: every mask pixel stays as it was."""
    from PIL import Image

    rng = np.random.default_rng(3)
    sizes = [(1080, 1920), (480, 640), (3024, 4032), (257, 999), (1000, 300), (256, 256)]
    for trial in range(24):
        logits = (rng.normal(0, 3, (256, 256)) * rng.uniform(0.01, 2) + rng.normal(0, 1)).astype(np.float32)
        height, width = sizes[trial % len(sizes)]
        before = np.asarray(Image.fromarray(logits, "F").resize((width, height), Image.Resampling.BILINEAR)) > 0
        mask, _ = imaging.mask_and_window(logits, height, width)
        assert np.array_equal(mask, np.where(before, 255, 0).astype(np.uint8)), (trial, height, width)


def test_coordinates_scale_to_the_model_frame():
    out = imaging.to_model_frame(np.array([[960.0, 540.0], [0.0, 1080.0]]), 1920, 1080)
    np.testing.assert_allclose(out, [[512.0, 512.0], [0.0, 1024.0]])


def _exif_rotated(orientation: int) -> bytes:
    img = Image.fromarray(np.zeros((40, 100, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    decoded = imaging.decode_image(_exif_rotated(orientation), 10**8)
    expected = (100, 40) if orientation in (5, 6, 7, 8) else (40, 100)
    assert (decoded.height, decoded.width) == expected


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("PNG", "P"),
        ("PNG", "LA"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "I;16"),
        ("JPEG", "CMYK"),
        ("JPEG", "L"),
        ("WEBP", "RGBA"),
        ("WEBP", "RGB"),
    ],
)
def test_modes_decode_to_rgb(fmt, mode):
    decoded = imaging.decode_image(image_bytes(64, 48, fmt=fmt, mode=mode), 10**8)
    assert decoded.rgb.shape == (48, 64, 3) and decoded.rgb.dtype == np.uint8
    if fmt == "PNG":  # WebP's encoder may drop an all-opaque alpha channel
        assert (decoded.alpha is not None) == (mode in ("LA", "RGBA"))


def test_sixteen_bit_keeps_its_range():
    array = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    decoded = imaging.decode_image(buf.getvalue(), 10**8)
    assert decoded.rgb.min() == 0 and decoded.rgb.max() == 255


@pytest.mark.parametrize(
    "data,too_large",
    [
        (b"", False),
        (b"GIF89a" + b"\0" * 100, False),
        (b"not an image at all", False),
        (image_bytes(64, 48)[:200], False),
    ],
)
def test_bad_files_are_rejected(data, too_large):
    with pytest.raises(ImageRejected) as info:
        imaging.decode_image(data, 10**8)
    assert info.value.too_large is too_large


def test_other_formats_are_rejected():
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="GIF")
    with pytest.raises(ImageRejected, match="not a JPEG, PNG or WebP"):
        imaging.decode_image(buf.getvalue(), 10**8)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageRejected) as info:
        imaging.decode_image(image_bytes(400, 300, fmt="PNG"), max_pixels=100_000)
    assert info.value.too_large


def test_feather_softens_only_when_asked():
    alpha = np.zeros((100, 100), np.uint8)
    alpha[30:70, 30:70] = 255
    assert set(np.unique(imaging.feather(alpha, 0))) == {0, 255}
    soft = imaging.feather(alpha, 10)
    assert np.any((soft > 0) & (soft < 255))


def test_cutout_is_lossless_and_transparent_elsewhere():
    rgb = np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    decoded = imaging.DecodedImage(rgb=rgb, alpha=None, format="PNG")
    alpha = np.zeros((50, 60), np.uint8)
    alpha[10:40, 10:50] = 255
    for fmt in ("png", "webp"):
        out = Image.open(io.BytesIO(imaging.encode_cutout(imaging.cutout(decoded, alpha), fmt)))
        arr = np.asarray(out.convert("RGBA"))
        assert out.size == (60, 50)
        np.testing.assert_array_equal(arr[10:40, 10:50, :3], rgb[10:40, 10:50])
        np.testing.assert_array_equal(arr[..., 3], alpha)
        assert not out.info.get("exif") and not out.info.get("icc_profile")


def test_styled_cutout_crops_pads_and_fills():
    rgb = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    image = imaging.DecodedImage(rgb, None, "PNG")
    alpha = np.zeros((20, 30), np.uint8)
    alpha[0:5, 10:20] = 255
    cropped = np.asarray(imaging.styled_cutout(image, alpha, ExtractionOptions(crop=True, crop_margin=3)))
    assert cropped.shape == (11, 16, 4)  # 5 + 2*3 rows, 10 + 2*3 columns
    assert (cropped[:3, :, 3] == 0).all() and (cropped[3:8, 3:13, :3] == rgb[0:5, 10:20]).all()
    filled = np.asarray(imaging.styled_cutout(image, alpha, ExtractionOptions(bg_color="#010203")))
    assert filled.shape == (20, 30, 3) and (filled[alpha == 0] == [1, 2, 3]).all()
    assert (filled[alpha == 255] == rgb[alpha == 255]).all()
    only = np.asarray(imaging.styled_cutout(image, alpha, ExtractionOptions(crop=True, channels="alpha")))
    assert only.shape == (5, 10) and (only == 255).all()
    with pytest.raises(imaging.NothingToCrop):
        imaging.styled_cutout(image, np.zeros_like(alpha), ExtractionOptions(crop=True))


def test_masks_render_to_the_pixels_of_the_whole_image_upsampling_and_a_plain_grayscale_png():
    """Rendering got cheaper, not different: the same pixels as thresholding the whole upsampled image,
    the box and area counted in the window equal the whole image's, and the PNG decodes to them as L."""
    import io

    from PIL import Image

    from maskserve.core import encodings
    from maskserve.core.masks import upsample_logits

    rng = np.random.default_rng(7)
    sizes = [(1080, 1920), (480, 640), (257, 300), (4000, 3000), (100, 180)]
    for trial in range(60):
        logits = np.full((256, 256), -4.0, np.float32)
        if trial % 3 == 0:
            logits = rng.normal(0, 3, (256, 256)).astype(np.float32)  # noise, as random weights give
        elif trial % 3 == 1:
            y, x = rng.integers(20, 200, 2)
            logits[y : y + 40, x : x + 30] = rng.uniform(-0.5, 4, (40, 30))  # an object, edges near 0
        height, width = sizes[trial % len(sizes)]
        mask, (rows, cols) = imaging.mask_and_window(logits, height, width)
        expected = np.where(upsample_logits(logits, height, width) > 0, 255, 0).astype(np.uint8)
        assert np.array_equal(mask, expected)
        assert encodings.bbox(expected > 0) == (
            None
            if not expected.any()
            else [
                b + o for b, o in zip(encodings.bbox(mask[rows, cols] > 0), (cols.start, rows.start, 0, 0), strict=True)
            ]
        )
        decoded = Image.open(io.BytesIO(imaging.encode_mask_png(mask)))
        assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), mask)


def test_a_large_mask_deflated_in_two_halves_is_one_valid_png():
    """Above ``PARALLEL_DEFLATE_BYTES`` the halves are deflated on two threads: libpng (OpenCV), Pillow and zlib
    (which checks the Adler-32 of the whole stream) all read the same pixels."""
    import io
    import struct
    import zlib

    import cv2
    from PIL import Image

    rng = np.random.default_rng(11)
    for height, width in [(1080, 1920), (3024, 4032), (1025, 1023)]:
        mask = np.where(rng.random((height, width)) > 0.7, 255, 0).astype(np.uint8)
        mask[: height // 3] = 0  # long runs too
        png = imaging.encode_mask_png(mask)
        assert height * (width + 1) >= imaging.PARALLEL_DEFLATE_BYTES
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), mask)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), mask)
        length = struct.unpack(">I", png[33:37])[0]
        assert png[37:41] == b"IDAT"
        rows = zlib.decompress(png[41 : 41 + length])
        assert rows == np.hstack([np.zeros((height, 1), np.uint8), mask]).tobytes()


def test_small_holes_are_filled_as_sam2s_video_predictor_fills_them():
    """Our hole filling against SAM 2's own ``fill_holes_in_mask_scores`` (its CUDA extension's one function
    through the test-only stand-in), on logits with holes of every size up to and past the limit."""
    from sam2.utils.misc import fill_holes_in_mask_scores

    from maskserve.core.masks import fill_small_holes
    from maskserve.devtools import sam2_ext_standin

    rng = np.random.default_rng(5)
    logits = np.full((64, 64), 3.0, np.float32)
    for size in range(1, 5):  # square holes of 1, 4, 9 and 16 px
        x = 4 + 14 * size
        logits[10 : 10 + size, x : x + size] = -2.0
    logits[40:42, 0:3] = -1.0  # a 6 px region on the border counts too
    logits[50, 50] = logits[51, 51] = -1.0  # two pixels touching at a corner: one 8-connected region
    logits[55:64, 55:64] = rng.normal(size=(9, 9)).astype(np.float32)  # speckle
    with sam2_ext_standin.installed():
        want = fill_holes_in_mask_scores(torch.from_numpy(logits)[None, None], 8)[0, 0].numpy()
    got = fill_small_holes(logits, 8)
    assert np.array_equal(got, want)
    assert (got[10:12, 32:34] > 0).all() and (got[10:13, 46:49] < 0).all()  # 4 px filled, 9 px kept
    assert logits[10, 18] < 0  # the input is left as it was
