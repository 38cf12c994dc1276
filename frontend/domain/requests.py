"""Every endpoint's parameters, declared once (Pydantic).

Each endpoint has one query declaration (``SegmentQuery``, ``ExtractQuery``, …).
It drives three things:
* the parsing of the query string and the contract's 422 ``detail`` list
  (``http/parsing.py`` feeds the query to it; every error has type
  ``value_error`` and the contract's message);
* the OpenAPI document (``http/openapi.py`` generates each operation's
  parameters from the declaration's fields);
* the typed records the services, the async store and the webhooks use:
  ``Prompts``, ``ExtractionOptions``, ``EverythingOptions`` and
  ``RequestParams``, which is what an accepted ``async=true`` request keeps.

Query values that are JSON (``points``, ``labels``, ``box``, ``objects``) are
marked ``JSON`` and decoded by the parser before validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BeforeValidator, Field, model_validator

from maskserve.core.signatures import MAX_OBJECTS, MAX_PROMPT_POINTS
from maskserve.frontend.domain.fields import (
    JSON,
    MAX_CROP_MARGIN,
    MAX_FEATHER,
    MAX_POINTS_PER_SIDE,
    MAX_REGION_AREA,
    MAX_WEBHOOK_URL,
    MIN_POINTS_PER_SIDE,
    OUTPUT_FORMATS,
    WEBHOOK_URL,
    Box,
    Choice,
    Declared,
    EverythingMaskFormat,
    Flag,
    Labels,
    MaskFormat,
    Points,
    Ranged,
    check_colour,
    check_image_id,
    check_job_id,
    check_webhook_url,
    invalid,
    refuse,
)
from maskserve.frontend.domain.images import IMAGE_ID


def _prompt_checks(model: str, points: Any, labels: Any, box: Any) -> None:
    """The rules across one object's points, labels and box."""
    if labels is not None and points is None:
        raise refuse(model, "labels", "labels need points", labels)
    if labels is not None and points is not None and len(labels) != len(points):
        raise refuse(model, "labels", "labels must have the same length as points", labels)
    used = (0 if points is None else len(points)) + (0 if box is None else 2)
    if used > MAX_PROMPT_POINTS:
        raise refuse(model, "points", f"at most {MAX_PROMPT_POINTS} points (a box counts as 2)", points)


class Prompt(Declared):
    """One object's prompt, in pixels of the oriented image: points (labels default to all 1) and/or a box."""

    points: Points = None
    labels: Labels = None
    box: Box = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data or set(data) - {"points", "labels", "box"}:
            raise invalid("must be an object with 'points' (and 'labels') and/or 'box'")
        if data.get("points") is None and data.get("box") is None:
            raise invalid("needs 'points' or 'box'")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Prompt:
        _prompt_checks("Prompt", self.points, self.labels, self.box)
        return self

    @property
    def given(self) -> bool:
        return self.points is not None or self.box is not None

    def point_array(self) -> np.ndarray | None:
        return None if self.points is None else np.array(self.points, np.float32).reshape(-1, 2)

    def label_array(self) -> np.ndarray | None:
        if self.points is None:
            return None
        return np.array(self.labels if self.labels is not None else [1] * len(self.points), np.int32)

    def box_array(self) -> np.ndarray | None:
        return None if self.box is None else np.array(self.box, np.float32)


class Prompts(Declared):
    """What a request segments: one object (``points``/``labels``/``box``) or several (``objects``)."""

    objects: tuple[Prompt, ...] = ()
    several: bool = False  # given as ``objects``: the result lists each one
    mask_format: MaskFormat = "png"
    previous_job_id: str | None = None  # refine that job's mask

    @property
    def given(self) -> bool:
        return bool(self.objects) and all(o.given for o in self.objects)


class ExtractionOptions(Declared):
    """Feather, output format and styling of a cut-out (API.md 2 and v1.1), checked against each other."""

    feather: Annotated[int, Ranged(0, MAX_FEATHER)] = Field(
        0, description="softens the alpha edge by about this many pixels"
    )
    output_format: Annotated[str, Choice(OUTPUT_FORMATS, "must be 'webp', 'png' or 'jpeg'")] = Field(
        "webp",
        description="output image format; jpeg only with an opaque bg_color; png with channels=alpha "
        "(its default there)",
    )
    bg_color: Annotated[str | None, BeforeValidator(check_colour)] = Field(
        None,
        description="fill the removed background with this colour (#RRGGBB or #RRGGBBAA) instead of transparency",
        json_schema_extra={"pattern": "^#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})$"},
    )
    crop: Flag = Field(False, description="crop the output to the kept region's bounding box")
    crop_margin: Annotated[int, Ranged(0, MAX_CROP_MARGIN)] = Field(
        0, description="pixels added around the crop box on every side (with crop=true)"
    )
    channels: Annotated[str, Choice(("rgba", "alpha"), "must be 'rgba' or 'alpha'")] = Field(
        "rgba", description="rgba: the cut-out; alpha: a grayscale PNG of its final alpha only"
    )

    @model_validator(mode="before")
    @classmethod
    def _format_follows_channels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("output_format") is None:
            alpha = str(data.get("channels") or "rgba").lower() == "alpha"
            data = {**data, "output_format": "png" if alpha else "webp"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExtractionOptions:
        name = type(self).__name__
        if self.channels == "alpha" and self.bg_color is not None:
            raise refuse(name, "bg_color", "has no effect with channels=alpha (the alpha alone)", self.bg_color)
        if self.channels == "alpha" and self.output_format != "png":
            raise refuse(name, "output_format", "channels=alpha gives a grayscale PNG: use 'png'", self.output_format)
        if self.output_format == "jpeg" and not self.opaque:
            raise refuse(
                name,
                "output_format",
                "jpeg needs an opaque result: give an opaque bg_color (#RRGGBB or alpha ff)",
                self.output_format,
            )
        if self.crop_margin and not self.crop:
            raise refuse(name, "crop_margin", "applies to crop=true only", self.crop_margin)
        return self

    @property
    def background(self) -> tuple[int, int, int, int] | None:
        """``bg_color`` as RGBA 0-255."""
        if self.bg_color is None:
            return None
        digits = self.bg_color[1:] + ("ff" if len(self.bg_color) == 7 else "")
        r, g, b, a = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
        return r, g, b, a

    @property
    def opaque(self) -> bool:
        background = self.background
        return self.channels == "rgba" and background is not None and background[3] == 255

    def extraction(self) -> ExtractionOptions:
        """These options alone (a query declaration that extends them hands the services this record)."""
        return ExtractionOptions.model_validate(self.model_dump(include=set(ExtractionOptions.model_fields)))


class EverythingOptions(Declared):
    """``POST …/image-segmentation/everything``'s parameters (API.md, v1.1)."""

    points_per_side: Annotated[int, Ranged(MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE)] = Field(
        16,
        description="grid of points per side; a grid that this deployment would not finish within its time limit "
        "for one request (the model tier measures its speed on the first decoder batches) is refused with 422",
    )
    pred_iou_thresh: Annotated[float, Ranged(0.0, 1.0, float)] = Field(
        0.8, description="keep masks above this predicted IoU"
    )
    stability_score_thresh: Annotated[float, Ranged(0.0, 1.0, float)] = Field(
        0.92, description="keep masks at or above this stability"
    )
    min_mask_region_area: Annotated[int, Ranged(0, MAX_REGION_AREA)] = Field(
        0, description="remove holes and islands smaller than this (pixels)"
    )
    max_masks: Annotated[int, Ranged(1, 255)] = Field(100, description="at most this many masks")
    mask_format: EverythingMaskFormat = Field("rle", description="inline mask encoding")

    def everything(self) -> EverythingOptions:
        return EverythingOptions.model_validate(self.model_dump(include=set(EverythingOptions.model_fields)))


@dataclass(frozen=True)
class Later:
    """``async=true``: answer 202 at once, run in the background, then tell ``webhook_url`` (if any)."""

    webhook_url: str | None = None
    base_url: str | None = None  # the origin the request came in on: the webhook's links point there


class AsyncFields(Declared):
    run_async: Flag = Field(
        False,
        alias="async",
        description="true: checked and reserved now, answered 202 (status processing, output_url null), run in "
        "the background; GET /v1/jobs/{id} or /v1/batches/{id} returns the current shape",
    )
    webhook_url: Annotated[str | None, BeforeValidator(check_webhook_url)] = Field(
        None,
        max_length=MAX_WEBHOOK_URL,
        json_schema_extra={"pattern": WEBHOOK_URL.pattern},
        description="with async=true: POSTed the job's or batch's JSON when it ends, signed with the key's webhook "
        "secret (Maskserve-Signature: t=<unix>,v1=<hex HMAC-SHA256 of '<t>.<body>'>), retried with backoff; "
        "loopback, private and link-local targets are refused with 422",
    )

    @model_validator(mode="after")
    def _webhook_needs_async(self) -> AsyncFields:
        if self.webhook_url is not None and not self.run_async:
            raise refuse(type(self).__name__, "webhook_url", "needs async=true", self.webhook_url)
        return self

    def later(self, base_url: str) -> Later | None:
        return Later(self.webhook_url, base_url) if self.run_async else None


class PromptFields(Declared):
    """``points``/``labels``/``box`` (one object) or ``objects`` (several), as query parameters."""

    objects: Annotated[
        list[Prompt] | None,
        JSON,
        Field(
            description=f"JSON array of 1-{MAX_OBJECTS} prompt objects, each "
            '{"points": [[x, y], …], "labels": [..], "box": [x1, y1, x2, y2]}; one mask each (not with '
            "points/labels/box)"
        ),
    ] = None
    points: Annotated[
        Points,
        JSON,
        Field(description=f"JSON array of [x, y] pixel coordinates (at most {MAX_PROMPT_POINTS}, a box counts as 2)"),
    ] = None
    labels: Annotated[Labels, JSON, Field(description="JSON array of 0/1, same length as points (default all 1)")] = (
        None
    )
    box: Annotated[Box, JSON, Field(description="JSON array [x1, y1, x2, y2] with x1 < x2 and y1 < y2")] = None
    refines: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _object_count(cls, data: Any) -> Any:
        objects = data.get("objects") if isinstance(data, dict) else None
        if isinstance(objects, list) and not 1 <= len(objects) <= MAX_OBJECTS:
            raise refuse(cls.__name__, "objects", f"must hold 1 to {MAX_OBJECTS} prompt objects, got {len(objects)}")
        return data

    @model_validator(mode="after")
    def _one_way(self) -> PromptFields:
        name = type(self).__name__
        _prompt_checks(name, self.points, self.labels, self.box)
        if self.objects is not None and (self.points is not None or self.box is not None):
            raise refuse(name, "objects", "send either 'objects' or 'points'/'labels'/'box', not both")
        return self

    def prompts(self, mask_format: str = "png", previous_job_id: str | None = None) -> Prompts:
        if self.objects is not None:
            return Prompts(objects=tuple(self.objects), several=True, mask_format=mask_format)
        single = Prompt.model_construct(points=self.points, labels=self.labels, box=self.box)
        objects = (single,) if single.given else ()
        return Prompts(objects=objects, mask_format=mask_format, previous_job_id=previous_job_id)


class ByHandle(Declared):
    """``image_id`` in place of the upload (single requests only, API.md v1.2)."""

    image_id: Annotated[str | None, BeforeValidator(check_image_id)] = Field(
        None,
        description="an earlier upload's handle (img_<32 hex>, in its result) in place of the image: the request "
        "then carries no image file; unknown, expired or another key's: 404",
        json_schema_extra={"pattern": IMAGE_ID.pattern},
    )


class SegmentBatchQuery(AsyncFields, PromptFields):
    """``POST /v1/services/image-segmentation/batch``."""

    mask_format: MaskFormat = Field(
        "png",
        description="png: nothing inline; rle: COCO compressed RLE in result.mask; polygons: outer rings and holes",
    )

    def segmentation(self) -> Prompts:
        return self.prompts(self.mask_format)


class SegmentQuery(ByHandle, SegmentBatchQuery):
    """``POST /v1/services/image-segmentation``."""

    previous_job_id: Annotated[str | None, BeforeValidator(check_job_id)] = Field(
        None, description="refine the mask of this earlier segmentation (same key, same image)"
    )

    @model_validator(mode="after")
    def _refines_one(self) -> SegmentQuery:
        if self.previous_job_id is not None and self.objects is not None:
            raise refuse(type(self).__name__, "previous_job_id", "refines one mask: not combinable with 'objects'")
        return self

    def segmentation(self) -> Prompts:
        return self.prompts(self.mask_format, self.previous_job_id)


class EverythingQuery(ByHandle, AsyncFields, EverythingOptions):
    """``POST /v1/services/image-segmentation/everything``."""


class ExtractBatchQuery(AsyncFields, ExtractionOptions, PromptFields):
    """``POST /v1/services/object-extraction/batch``."""


class ExtractQuery(ByHandle, ExtractBatchQuery):
    """``POST /v1/services/object-extraction``."""


QUERIES: tuple[type[Declared], ...] = (
    SegmentQuery,
    SegmentBatchQuery,
    EverythingQuery,
    ExtractQuery,
    ExtractBatchQuery,
)
QUERY_NAMES = frozenset(field.alias or name for query in QUERIES for name, field in query.model_fields.items())
"""Every query parameter some endpoint takes: elsewhere it is refused with 422 rather than ignored."""


class RequestParams(Declared):
    """What an accepted ``async=true`` request keeps besides its inputs, to run after a restart."""

    prompts: Prompts | None = None
    extraction: ExtractionOptions | None = None
    everything: EverythingOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_form(cls, data: Any) -> Any:
        """Requests accepted by an older release kept the styling nested, with the colour as RGBA values."""
        extraction = data.get("extraction") if isinstance(data, dict) else None
        if isinstance(extraction, dict) and "style" in extraction:
            style = dict(extraction["style"])
            colour = style.pop("bg_color", None)
            if colour is not None:
                style["bg_color"] = "#" + "".join(f"{int(v):02x}" for v in colour)
            rest = {k: v for k, v in extraction.items() if k != "style"}
            data = {**data, "extraction": {**rest, **style}}
        return data
