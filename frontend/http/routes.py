"""Every route of the API, declared once: its path, handler and name (what the auth middleware decides by),
and what the OpenAPI document says of it (the query declaration, the body, the answers)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.domain.requests import (
    EverythingQuery,
    ExtractBatchQuery,
    ExtractQuery,
    SegmentBatchQuery,
    SegmentQuery,
)
from maskserve.frontend.domain.responses import Account, Batch, Result, Single
from maskserve.frontend.domain.videos import PropagateQuery, VideoPromptQuery, VideoUploadQuery
from maskserve.frontend.http import handlers, openapi, playground, video_handlers
from maskserve.frontend.http.operations import Body, Route
from maskserve.frontend.http.state import SETTINGS


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _content(*types: str, binary: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"} if binary else {"type": "string"}
    return {t: {"schema": schema} for t in types}


_SINGLE_ERRORS = (400, 401, 402, 409, 413, 422, 429, 503)
_BATCH_ERRORS = (400, 401, 409, 413, 422, 429, 503)
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/services/image-segmentation",
        "segment",
        handlers.segment,
        "Segment one object, or several with objects; refine an earlier mask (1 credit)",
        SegmentQuery,
        Body({"file": False}, required=False),
        Single,
        (*_SINGLE_ERRORS, 404),  # 404: an unknown previous_job_id or image_id
    ),
    Route(
        "POST",
        "/v1/services/image-segmentation/batch",
        "segment_batch",
        handlers.segment_batch,
        "Segment 1-{max_batch} images with the same prompt (1 credit each)",
        SegmentBatchQuery,
        Body({"files": True}, repeated=True),
        Batch,
        _BATCH_ERRORS,
        bucket=RateBucket.BATCH,
    ),
    Route(
        "POST",
        "/v1/services/image-segmentation/everything",
        "segment_everything",
        handlers.segment_everything,
        "Segment everything: SAM's automatic mask generation; a label-map PNG and the masks (4 credits)",
        EverythingQuery,
        Body({"file": False}, required=False),
        Single,
        (*_SINGLE_ERRORS, 404),
    ),
    Route(
        "POST",
        "/v1/services/object-extraction",
        "extract",
        handlers.extract,
        "Cut out one object (or the union of objects) on a transparent background (2 credits)",
        ExtractQuery,
        Body({"image": False, "mask": False}, required=False),
        Single,
        (*_SINGLE_ERRORS, 404),
    ),
    Route(
        "POST",
        "/v1/services/object-extraction/batch",
        "extract_batch",
        handlers.extract_batch,
        "Cut out objects from 1-{max_batch} images (2 credits each)",
        ExtractBatchQuery,
        Body({"images": True, "masks": False}, repeated=True),
        Batch,
        _BATCH_ERRORS,
        bucket=RateBucket.BATCH,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}",
        "job",
        handlers.get_job,
        "A job of this API key",
        answer=Result,
        errors=(401, 404, 429),
        parameters=(_path_id("job_id"),),
        bucket=RateBucket.READ,
    ),
    Route(
        "GET",
        "/v1/batches/{batch_id}",
        "batch",
        handlers.get_batch,
        "A batch of this API key, its results in upload order",
        answer=Batch,
        errors=(401, 404, 429),
        parameters=(_path_id("batch_id"),),
        bucket=RateBucket.READ,
    ),
    Route(
        "DELETE",
        "/v1/images/{image_id}",
        "image",
        handlers.delete_image,
        "Forget an image handle of this API key at once (its kept upload too)",
        errors=(401, 404, 429),
        parameters=(_path_id("image_id"),),
        bucket=RateBucket.READ,
        responses={"204": {"description": "forgotten; the handle answers 404 from now on"}},
    ),
    Route(
        "POST",
        "/v1/videos",
        "video_upload",
        video_handlers.upload,
        "Open a video: MP4, WebM, MOV or animated GIF/WebP, at most max_video_frames frames (0 credits)",
        VideoUploadQuery,
        Body({"file": False}),
        answer=None,
        errors=(400, 401, 409, 413, 422, 429, 503),
        bucket=RateBucket.BATCH,
        responses={"201": {"description": "the video is open", "content": _JSON_OBJECT}},
    ),
    Route(
        "GET",
        "/v1/videos/{video_id}",
        "video",
        video_handlers.state,
        "A video's state: its frames, size, rate, objects and their prompted frames",
        errors=(401, 404, 429),
        parameters=(_path_id("video_id"),),
        bucket=RateBucket.READ,
        responses={"200": {"description": "the video", "content": _JSON_OBJECT}},
    ),
    Route(
        "DELETE",
        "/v1/videos/{video_id}",
        "video_delete",
        video_handlers.delete,
        "Close a video at once: its frames, prompts and model-tier state; a running propagation is refunded",
        errors=(401, 404, 429),
        parameters=(_path_id("video_id"),),
        bucket=RateBucket.READ,
        responses={"204": {"description": "closed; the video answers 404 from now on"}},
    ),
    Route(
        "POST",
        "/v1/videos/{video_id}/prompts",
        "video_prompt",
        video_handlers.prompt,
        "Clicks or a box for one object on one frame, answered at once with its mask there (1 credit)",
        VideoPromptQuery,
        answer=None,
        errors=(400, 401, 402, 404, 422, 429, 503),
        parameters=(_path_id("video_id"),),
        responses={"200": {"description": "the object's mask on that frame", "content": _JSON_OBJECT}},
    ),
    Route(
        "POST",
        "/v1/videos/{video_id}/propagate",
        "video_propagate",
        video_handlers.propagate,
        "Track every prompted object through the video, asynchronously (1 credit per frame processed)",
        PropagateQuery,
        answer=None,
        errors=(400, 401, 402, 404, 409, 422, 429, 503),
        parameters=(_path_id("video_id"),),
        bucket=RateBucket.BATCH,
        responses={"202": {"description": "accepted: the job shape with its progress", "content": _JSON_OBJECT}},
    ),
    Route(
        "GET",
        "/v1/account",
        "account",
        handlers.get_account,
        "Name and credit balance of this API key",
        answer=Account,
        errors=(401, 429),
        bucket=RateBucket.READ,
    ),
    Route(
        "GET",
        "/v1/files/{job_id}",
        "file",
        handlers.get_file,
        "An output image through its signed, expiring link (no API key)",
        errors=(403, 404, 503),
        secured=False,
        parameters=(
            _path_id("job_id"),
            {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
        ),
        responses={
            "200": {
                "description": "the image",
                "content": _content("image/png", "image/webp", "image/jpeg", binary=True),
            },
            "302": {
                "description": "with the s3 files backend in redirect mode: the image is at a short-lived presigned "
                "URL on the object store",
                "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
            },
        },
    ),
    Route(
        "GET",
        "/playground",
        "playground",
        playground.page,
        "The click-to-segment playground page (HTML; it holds no secrets)",
        secured=False,
        responses={"200": {"description": "the page", "content": _content("text/html")}},
    ),
    Route(
        "GET",
        "/playground/{name}",
        "playground_asset",
        playground.asset,
        "The playground's scripts and style sheet",
        errors=(404,),
        secured=False,
        parameters=(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": sorted(playground.ASSETS)},
            },
        ),
        responses={"200": {"description": "the file", "content": _content(*sorted(set(playground.ASSETS.values())))}},
    ),
    Route(
        "GET",
        "/healthz",
        "healthz",
        handlers.healthz,
        "Process is alive",
        secured=False,
        responses={"200": {"description": "alive", "content": _JSON_OBJECT}},
    ),
    Route(
        "GET",
        "/readyz",
        "readyz",
        handlers.readyz,
        "Models ready and store reachable; model versions and weights source",
        secured=False,
        responses={
            "200": {"description": "ready", "content": _JSON_OBJECT},
            "503": {"description": "not ready", "content": _JSON_OBJECT},
        },
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        handlers.metrics,
        "Prometheus metrics of this frontend (requests, latency, credits, cache, Triton calls, event-loop lag)",
        secured=False,
        responses={"200": {"description": "Prometheus text format", "content": _content("text/plain")}},
    ),
)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app[SETTINGS], ALL))


OPENAPI = Route(
    "GET",
    "/openapi.json",
    "openapi",
    openapi_json,
    "This document",
    secured=False,
    responses={"200": {"description": "OpenAPI 3.1", "content": _JSON_OBJECT}},
)


ALL = (*ROUTES, OPENAPI)
PUBLIC_ROUTES = frozenset(route.name for route in ALL if not route.secured)
"""Route names that need no API key: health, readiness, the OpenAPI document, metrics, signed files,
and the playground page (which holds no secrets; it sends the visitor's key to the API routes)."""
RATE_BUCKETS = {route.name: route.bucket for route in ALL if route.secured}
"""The rate limit each private route counts against; one not listed counts as a single request."""


def add_routes(app: web.Application) -> None:
    """Every route has a name: the auth middleware lets only names in ``PUBLIC_ROUTES`` through without a key."""
    for route in ALL:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
