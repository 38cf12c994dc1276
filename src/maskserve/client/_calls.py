"""Each API call as a ``Spec``, and its options as typed dictionaries shared by both clients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from maskserve.client._core import ImageInput, Point, Spec, service, upload


class Object(TypedDict, total=False):
    points: list[list[float]]
    labels: list[int]
    box: list[float]


class Call(TypedDict, total=False):
    """What every service call takes (``idempotency_key`` travels as a header)."""

    run_async: bool  # accepted at once (202), then GET or wait()
    webhook_url: str
    idempotency_key: str  # default: a fresh one per call, the same on its retries


class Prompt(Call, total=False):
    points: Sequence[Point]
    labels: Sequence[int]
    box: Sequence[float]
    objects: Sequence[Object]


class BatchSegmentOptions(Prompt, total=False):
    mask_format: str  # png | rle | polygons


class ByHandle(TypedDict, total=False):
    image_id: str  # an earlier upload's handle (``Result.image_id``) in place of the image


class SegmentOptions(BatchSegmentOptions, ByHandle, total=False):
    previous_job_id: str  # refine that job's mask


class BatchExtractOptions(Prompt, total=False):
    feather: int
    output_format: str  # webp | png | jpeg (opaque only)
    bg_color: str  # #RRGGBB or #RRGGBBAA
    crop: bool
    crop_margin: int
    channels: str  # rgba | alpha


class ExtractOptions(BatchExtractOptions, ByHandle, total=False):
    pass


class EverythingOptions(Call, ByHandle, total=False):
    points_per_side: int
    pred_iou_thresh: float
    stability_score_thresh: float
    min_mask_region_area: int
    max_masks: int
    mask_format: str  # rle | polygons


def _split(options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    rest = dict(options)
    return rest.pop("idempotency_key", None), rest


def _files(**inputs: ImageInput | None) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart fields of the inputs given (an image sent by its handle has none)."""
    return [upload(name, value) for name, value in inputs.items() if value is not None]


def segment(image: ImageInput | None, options: SegmentOptions) -> Spec:
    key, rest = _split(dict(options))
    return service("image-segmentation", _files(file=image), key, **rest)


def extract(image: ImageInput | None, mask: ImageInput | None, options: ExtractOptions) -> Spec:
    key, rest = _split(dict(options))
    return service("object-extraction", _files(image=image, mask=mask), key, **rest)


def everything(image: ImageInput | None, options: EverythingOptions) -> Spec:
    key, rest = _split(dict(options))
    return service("image-segmentation/everything", _files(file=image), key, **rest)


def forget_image(image_id: str) -> Spec:
    return Spec("DELETE", f"/v1/images/{image_id}")


def batch_segment(images: Sequence[ImageInput], options: BatchSegmentOptions, part: int) -> Spec:
    key, rest = _split(dict(options))
    return service("image-segmentation/batch", [upload("files", i) for i in images], key and f"{key}/{part}", **rest)


def batch_extract(
    images: Sequence[ImageInput], masks: Sequence[ImageInput] | None, options: BatchExtractOptions, part: int
) -> Spec:
    key, rest = _split(dict(options))
    files = [upload("images", i) for i in images] + [upload("masks", m) for m in masks or ()]
    return service("object-extraction/batch", files, key and f"{key}/{part}", **rest)


def get(path: str) -> Spec:
    return Spec("GET", path)
