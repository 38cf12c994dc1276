"""Turning an HTTP request into typed values: query prompts and options, and
multipart uploads read as a stream with per-file limits."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiMapping

from maskserve.core.encodings import MASK_FORMATS
from maskserve.core.signatures import MAX_OBJECTS, MAX_PROMPT_POINTS
from maskserve.frontend import imaging
from maskserve.frontend.domain import MAX_POINTS_PER_SIDE, MIN_POINTS_PER_SIDE, EverythingOptions
from maskserve.frontend.errors import BadRequest, FieldError, PayloadTooLarge, ValidationFailed
from maskserve.frontend.services import ExtractionOptions, Later, Prompt, Prompts, Upload

Query = MultiMapping[str]

MAX_FEATHER = 50
OUTPUT_FORMATS = ("webp", "png", "jpeg")
MAX_CROP_MARGIN = 500
STYLE_QUERY = {"bg_color", "crop", "crop_margin", "channels"}
HEX_COLOUR = re.compile(r"#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})")
MAX_PARTS = 2 * 50 + 16
MAX_FIELD_NAME = 64
MAX_REGION_AREA = 40_000_000  # the pixel limit: a larger area removes nothing more
PROMPT_QUERY = {"points", "labels", "box", "objects", "mask_format"}
EVERYTHING_QUERY = {
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "min_mask_region_area",
    "max_masks",
    "mask_format",
}
EXTRACTION_QUERY = {"points", "labels", "box", "objects", "feather", "output_format", *STYLE_QUERY}
ASYNC_QUERY = {"async", "webhook_url"}
KNOWN_QUERY = {*PROMPT_QUERY, *EVERYTHING_QUERY, *EXTRACTION_QUERY, *ASYNC_QUERY, "previous_job_id"}


def _unique(query: Query, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise ValidationFailed.one("query", name, "given more than once")
    return values[0] if values else None


def _json_array(query: Query, name: str) -> list[Any] | None:
    raw = _unique(query, name)
    if raw is None:
        return None
    try:
        value = json.loads(raw, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError):
        raise ValidationFailed.one("query", name, "invalid JSON array") from None
    if not isinstance(value, list):
        raise ValidationFailed.one("query", name, "invalid JSON array")
    return value


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        value = float(x)
    except OverflowError:  # an integer with hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _prompt(raw_points: Any, raw_labels: Any, raw_box: Any, name: str | None = None) -> Prompt:
    """One object's prompt from its JSON values; errors name ``name`` (``objects``) or each parameter."""
    errors: list[FieldError] = []
    points = labels = box = None

    def error(param: str, msg: str) -> None:
        errors.append(FieldError("query", name or param, msg if name is None else f"{param}: {msg}"))

    if raw_points is not None:
        if not isinstance(raw_points, list) or not raw_points:
            error("points", "must contain at least one [x, y] pair")
        elif not all(
            isinstance(p, list) and len(p) == 2 and all(_number(c) is not None for c in p) for p in raw_points
        ):
            error("points", "must be an array of [x, y] pairs of finite numbers")
        else:
            points = np.array(raw_points, dtype=np.float64).reshape(-1, 2).astype(np.float32)
    if raw_labels is not None:
        if raw_points is None:
            error("labels", "labels need points")
        elif not isinstance(raw_labels, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in raw_labels
        ):
            error("labels", "labels must be 0 or 1")
        elif points is not None and len(raw_labels) != len(points):
            error("labels", "labels must have the same length as points")
        else:
            labels = np.array(raw_labels, np.int32)
    if raw_box is not None:
        values = [_number(v) for v in raw_box] if isinstance(raw_box, list) else []
        if len(values) != 4 or any(v is None for v in values):
            error("box", "must be [x1, y1, x2, y2] of finite numbers")
        elif not (values[0] < values[2] and values[1] < values[3]):  # type: ignore[operator]  # all numbers here
            error("box", "must satisfy x1 < x2 and y1 < y2")
        else:
            box = np.array(values, np.float32)
    if points is not None and labels is None:  # default all foreground (a labels error raises below)
        labels = np.ones(len(points), np.int32)
    used = (0 if points is None else len(points)) + (0 if box is None else 2)
    if used > MAX_PROMPT_POINTS:
        error("points", f"at most {MAX_PROMPT_POINTS} points (a box counts as 2)")
    if errors:
        raise ValidationFailed(*errors)
    return Prompt(points=points, labels=labels, box=box)


def parse_prompt(query: Query) -> Prompt:
    """``points``, ``labels`` and ``box`` from the query string; 422 on anything malformed."""
    return _prompt(_json_array(query, "points"), _json_array(query, "labels"), _json_array(query, "box"))


def parse_objects(query: Query) -> tuple[Prompt, ...] | None:
    """``objects``: a JSON array of 1-16 ``{"points", "labels", "box"}`` objects, each checked like one prompt."""
    raw = _json_array(query, "objects")
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_OBJECTS:
        raise ValidationFailed.one("query", "objects", f"must hold 1 to {MAX_OBJECTS} prompt objects, got {len(raw)}")
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item or set(item) - {"points", "labels", "box"}:
            raise ValidationFailed.one(
                "query", "objects", f"object {i}: must be an object with 'points' (and 'labels') and/or 'box'"
            )
        if item.get("points") is None and item.get("box") is None:
            raise ValidationFailed.one("query", "objects", f"object {i}: needs 'points' or 'box'")
        try:
            found.append(_prompt(item.get("points"), item.get("labels"), item.get("box"), "objects"))
        except ValidationFailed as exc:
            raise ValidationFailed(
                *(FieldError("query", "objects", f"object {i}: {e.msg}") for e in exc.errors)
            ) from None
    return tuple(found)


def parse_mask_format(query: Query, choices: tuple[str, ...] = MASK_FORMATS, default: str = "png") -> str:
    raw = _unique(query, "mask_format")
    value = default if raw is None else raw.lower()
    if value not in choices:
        raise ValidationFailed.one("query", "mask_format", f"must be one of {', '.join(choices)}")
    return value


def parse_prompts(query: Query, refine: bool = False) -> Prompts:
    """One object (``points``/``labels``/``box``) or several (``objects``), ``mask_format``, ``previous_job_id``."""
    objects = parse_objects(query)
    single = parse_prompt(query)
    if objects is not None and single.given:
        raise ValidationFailed.one("query", "objects", "send either 'objects' or 'points'/'labels'/'box', not both")
    previous = _unique(query, "previous_job_id") if refine else None
    if previous is not None:
        if not previous or len(previous) > 64 or not previous.isascii() or not previous.isprintable():
            raise ValidationFailed.one("query", "previous_job_id", "must be a job id")
        if objects is not None:
            raise ValidationFailed.one("query", "previous_job_id", "refines one mask: not combinable with 'objects'")
    mask_format = parse_mask_format(query)
    if objects is not None:
        return Prompts(objects, several=True, mask_format=mask_format)
    return Prompts((single,) if single.given else (), mask_format=mask_format, previous_job_id=previous)


def _bounded(query: Query, name: str, kind: type, low: float, high: float | None, default: Any) -> Any:
    raw = _unique(query, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
    except (ValueError, OverflowError):
        raise ValidationFailed.one("query", name, f"must be {'an integer' if kind is int else 'a number'}") from None
    if value < low or (high is not None and value > high):
        raise ValidationFailed.one(
            "query", name, f"must be from {low} to {high}" if high is not None else f"must be at least {low}"
        )
    return value


def parse_everything(query: Query) -> EverythingOptions:
    """Segment-everything's parameters, each in its range (API.md, v1.1)."""
    return EverythingOptions(
        points_per_side=_bounded(query, "points_per_side", int, MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE, 16),
        pred_iou_thresh=_bounded(query, "pred_iou_thresh", float, 0.0, 1.0, 0.8),
        stability_score_thresh=_bounded(query, "stability_score_thresh", float, 0.0, 1.0, 0.92),
        min_mask_region_area=_bounded(query, "min_mask_region_area", int, 0, MAX_REGION_AREA, 0),
        max_masks=_bounded(query, "max_masks", int, 1, 255, 100),
        mask_format=parse_mask_format(query, ("rle", "polygons"), "rle"),
    )


def _colour(raw: str | None) -> tuple[int, int, int, int] | None:
    if raw is None:
        return None
    if not HEX_COLOUR.fullmatch(raw):
        raise ValidationFailed.one("query", "bg_color", "must be #RRGGBB or #RRGGBBAA (hex; send '#' as %23)")
    digits = raw[1:] + ("ff" if len(raw) == 7 else "")
    r, g, b, a = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
    return r, g, b, a


def _flag(query: Query, name: str) -> bool:
    raw = _unique(query, name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise ValidationFailed.one("query", name, "must be 'true' or 'false'")
    return raw.lower() == "true"


def parse_later(query: Query, base_url: str) -> Later | None:
    """``async=true`` (accept now, run in the background) and its optional ``webhook_url`` (API.md v1.1).

    The URL itself (its form, and where it resolves to) is checked by the handler (``webhooks.check_target``).
    """
    later = _flag(query, "async")
    webhook_url = _unique(query, "webhook_url")
    if webhook_url is None:
        return Later(base_url=base_url) if later else None
    if not later:
        raise ValidationFailed.one("query", "webhook_url", "needs async=true")
    return Later(webhook_url, base_url)


def parse_extraction_options(query: Query) -> ExtractionOptions:
    """Feather, output format and styling (API.md, v1.1), checked against each other."""
    feather = _bounded(query, "feather", int, 0, MAX_FEATHER, 0)
    channels = (_unique(query, "channels") or "rgba").lower()
    if channels not in ("rgba", "alpha"):
        raise ValidationFailed.one("query", "channels", "must be 'rgba' or 'alpha'")
    given_format = _unique(query, "output_format")
    output_format = (given_format or ("png" if channels == "alpha" else "webp")).lower()
    if output_format not in OUTPUT_FORMATS:
        raise ValidationFailed.one("query", "output_format", "must be 'webp', 'png' or 'jpeg'")
    style = imaging.Styling(
        bg_color=_colour(_unique(query, "bg_color")),
        crop=_flag(query, "crop"),
        crop_margin=_bounded(query, "crop_margin", int, 0, MAX_CROP_MARGIN, 0),
        channels=channels,
    )
    if channels == "alpha" and style.bg_color is not None:
        raise ValidationFailed.one("query", "bg_color", "has no effect with channels=alpha (the alpha alone)")
    if channels == "alpha" and output_format != "png":
        raise ValidationFailed.one("query", "output_format", "channels=alpha gives a grayscale PNG: use 'png'")
    if output_format == "jpeg" and not style.opaque:
        raise ValidationFailed.one(
            "query", "output_format", "jpeg needs an opaque result: give an opaque bg_color (#RRGGBB or alpha ff)"
        )
    if style.crop_margin and not style.crop:
        raise ValidationFailed.one("query", "crop_margin", "applies to crop=true only")
    return ExtractionOptions(feather=feather, output_format=output_format, style=style)


def check_query(query: Query, allowed: set[str]) -> None:
    for name in set(query.keys()):
        if name in KNOWN_QUERY and name not in allowed:
            raise ValidationFailed.one("query", name, "not accepted by this endpoint")


def check_content_length(request: web.Request, max_files: int, max_file_bytes: int) -> None:
    """Refuse a body that cannot fit before reading any of it."""
    length = request.content_length
    if length is not None and length > max_files * max_file_bytes + 1024 * 1024:
        raise PayloadTooLarge(f"Upload too large: each file may be at most {max_file_bytes // (1024 * 1024)} MB")


async def read_uploads(
    request: web.Request, fields: set[str], max_file_bytes: int, timeout_s: float = 120.0
) -> dict[str, list[Upload]]:
    """Stream the multipart body within ``timeout_s``; keep the named file fields, enforce the size limit per file."""
    if not request.content_type.startswith("multipart/form-data"):
        raise BadRequest("Send the files as multipart/form-data")
    if "boundary=" not in request.headers.get("Content-Type", ""):
        raise BadRequest("Malformed multipart body: no boundary")
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_parts(request, fields, max_file_bytes)
    except TimeoutError:
        raise BadRequest(f"Upload too slow: the body must arrive within {timeout_s:.0f} s") from None
    except HttpProcessingError as exc:  # aiohttp's parser: a header line too long, a broken part
        raise BadRequest(f"Malformed multipart body: {exc.message}") from None


async def _read_parts(request: web.Request, fields: set[str], max_file_bytes: int) -> dict[str, list[Upload]]:
    try:
        reader: MultipartReader = await request.multipart()
    except (ValueError, AssertionError):
        raise BadRequest("Malformed multipart body") from None
    uploads: dict[str, list[Upload]] = {name: [] for name in fields}
    parts = 0
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            parts += 1
            if parts > MAX_PARTS:
                raise BadRequest(f"Too many parts in the multipart body (at most {MAX_PARTS})")
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not accepted")
            name = part.name or ""
            if len(name) > MAX_FIELD_NAME:
                raise BadRequest("Multipart field name too long")
            data = await _read_limited(part, max_file_bytes, name)
            if name in uploads:
                uploads[name].append(Upload(name, part.filename, data))
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"Malformed multipart body: {exc}") from None
    return uploads


async def _read_limited(part: BodyPartReader, limit: int, name: str) -> bytes:
    chunks = []
    size = 0
    while True:
        chunk = await part.read_chunk(256 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"File '{name}' is over the limit of {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)
