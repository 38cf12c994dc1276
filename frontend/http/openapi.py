"""The OpenAPI 3.1 description of the public API, kept beside the handlers it describes."""

from __future__ import annotations

from typing import Any

from maskserve import __version__
from maskserve.core.signatures import MAX_OBJECTS, MAX_PROMPT_POINTS
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import JobStatus
from maskserve.frontend.http.parsing import MAX_CROP_MARGIN, MAX_FEATHER, MAX_REGION_AREA

_ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
_VALIDATION = {
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}
_RESULT = {
    "type": "object",
    "required": [
        "job_id",
        "status",
        "input_filename",
        "output_url",
        "processing_time_ms",
        "error",
        "original_width",
        "original_height",
        "output_width",
        "output_height",
        "credits_used",
    ],
    "properties": {
        "job_id": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "input_filename": {"type": ["string", "null"]},
        "output_url": {"type": ["string", "null"]},
        "processing_time_ms": {"type": "number"},
        "error": {"type": ["string", "null"]},
        "original_width": {"type": ["integer", "null"]},
        "original_height": {"type": ["integer", "null"]},
        "output_width": {"type": ["integer", "null"]},
        "output_height": {"type": ["integer", "null"]},
        "credits_used": {"type": "integer"},
        "score": {"type": "number", "description": "predicted IoU of the mask (with objects: their mean)"},
        "bbox": {"$ref": "#/components/schemas/Box"},
        "area": {"type": "integer", "description": "white pixels"},
        "mask": {"$ref": "#/components/schemas/InlineMask"},
        "objects": {"type": "array", "items": {"$ref": "#/components/schemas/ObjectResult"}},
        "masks": {"type": "array", "items": {"$ref": "#/components/schemas/EverythingMask"}},
    },
}
_BOX = {
    "type": ["array", "null"],
    "items": {"type": "integer"},
    "minItems": 4,
    "maxItems": 4,
    "description": "[x, y, w, h] of the white region in pixels of the oriented input; null when empty",
}
_RINGS = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
_INLINE_MASK = {
    "oneOf": [
        {
            "type": "object",
            "required": ["format", "size", "counts"],
            "properties": {
                "format": {"const": "rle"},
                "size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                "counts": {"type": "string", "description": "COCO compressed RLE (pycocotools)"},
            },
        },
        {
            "type": "object",
            "required": ["format", "polygons", "holes"],
            "properties": {"format": {"const": "polygons"}, "polygons": _RINGS, "holes": _RINGS},
        },
    ]
}
_OBJECT_RESULT = {
    "type": "object",
    "required": ["index", "output_url", "score", "bbox", "area"],
    "properties": {
        "index": {"type": "integer"},
        "output_url": {"type": "string"},
        "score": {"type": "number"},
        "bbox": {"$ref": "#/components/schemas/Box"},
        "area": {"type": "integer"},
        "mask": {"$ref": "#/components/schemas/InlineMask"},
    },
}
_EVERYTHING_MASK = {
    "type": "object",
    "required": ["mask", "bbox", "area", "score", "stability_score", "point"],
    "properties": {
        "mask": {"$ref": "#/components/schemas/InlineMask"},
        "bbox": {"$ref": "#/components/schemas/Box"},
        "area": {"type": "integer"},
        "score": {"type": "number"},
        "stability_score": {"type": "number"},
        "point": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    },
}
_SINGLE = {
    "type": "object",
    "required": ["job_id", "status", "result", "error"],
    "properties": {
        "job_id": {"type": "string"},
        "status": {"type": "string"},
        "result": {"$ref": "#/components/schemas/Result"},
        "error": {"type": ["string", "null"]},
    },
}
_BATCH = {
    "type": "object",
    "required": [
        "batch_id",
        "status",
        "total_files",
        "completed",
        "failed",
        "results",
        "total_processing_time_ms",
        "total_credits_used",
        "error",
    ],
    "properties": {
        "batch_id": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "total_files": {"type": "integer"},
        "completed": {"type": "integer"},
        "failed": {"type": "integer"},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
        "total_processing_time_ms": {"type": "number"},
        "total_credits_used": {"type": "integer"},
        "error": {"type": ["string", "null"]},
    },
}


def _json(schema_ref: str, description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _query(name: str, description: str, schema: dict | None = None) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_PROMPTS = [
    _query("points", f"JSON array of [x, y] pixel coordinates (at most {MAX_PROMPT_POINTS}, a box counts as 2)"),
    _query("labels", "JSON array of 0/1, same length as points (default all 1)"),
    _query("box", "JSON array [x1, y1, x2, y2] with x1 < x2 and y1 < y2"),
]
_OBJECTS = _query(
    "objects",
    f"JSON array of 1-{MAX_OBJECTS} prompt objects, each "
    '{"points": [[x, y], …], "labels": [..], "box": [x1, y1, x2, y2]}; one mask each (not with points/labels/box)',
)
_MASK_FORMAT = _query(
    "mask_format",
    "png: nothing inline; rle: COCO compressed RLE in result.mask; polygons: outer rings and holes",
    {"type": "string", "enum": ["png", "rle", "polygons"], "default": "png"},
)
_REFINE = _query("previous_job_id", "refine the mask of this earlier segmentation (same key, same image)")
_EVERYTHING = [
    _query(
        "points_per_side",
        "grid of points per side; a grid that this deployment would not finish within its time limit for one "
        "request (the model tier measures its speed on the first decoder batches) is refused with 422",
        {"type": "integer", "minimum": 4, "maximum": 64, "default": 16},
    ),
    _query(
        "pred_iou_thresh",
        "keep masks above this predicted IoU",
        {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8},
    ),
    _query(
        "stability_score_thresh",
        "keep masks at or above this stability",
        {"type": "number", "minimum": 0, "maximum": 1, "default": 0.92},
    ),
    _query(
        "min_mask_region_area",
        "remove holes and islands smaller than this (pixels)",
        {"type": "integer", "minimum": 0, "maximum": MAX_REGION_AREA, "default": 0},
    ),
    _query("max_masks", "at most this many masks", {"type": "integer", "minimum": 1, "maximum": 255, "default": 100}),
    _query("mask_format", "inline mask encoding", {"type": "string", "enum": ["rle", "polygons"], "default": "rle"}),
]
_EXTRACTION = [
    _query(
        "feather",
        "softens the alpha edge by about this many pixels",
        {"type": "integer", "minimum": 0, "maximum": MAX_FEATHER, "default": 0},
    ),
    _query(
        "output_format",
        "output image format; jpeg only with an opaque bg_color; png with channels=alpha (its default there)",
        {"type": "string", "enum": ["webp", "png", "jpeg"], "default": "webp"},
    ),
    _query(
        "bg_color",
        "fill the removed background with this colour (#RRGGBB or #RRGGBBAA) instead of transparency",
        {"type": "string", "pattern": "^#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})$"},
    ),
    _query(
        "crop",
        "crop the output to the kept region's bounding box",
        {"type": "string", "enum": ["true", "false"], "default": "false"},
    ),
    _query(
        "crop_margin",
        "pixels added around the crop box on every side (with crop=true)",
        {"type": "integer", "minimum": 0, "maximum": MAX_CROP_MARGIN, "default": 0},
    ),
    _query(
        "channels",
        "rgba: the cut-out; alpha: a grayscale PNG of its final alpha only",
        {"type": "string", "enum": ["rgba", "alpha"], "default": "rgba"},
    ),
]


def _errors(*codes: int) -> dict:
    texts = {
        400: "bad request",
        401: "missing or invalid API key",
        402: "insufficient credits",
        403: "bad or expired signature",
        404: "not found",
        409: "a request with this Idempotency-Key is still in progress",
        413: "file or image too large",
        422: "validation failed",
        429: "rate limit exceeded",
        503: "inference server or output storage unavailable",
    }
    return {str(c): _json("Validation" if c == 422 else "Error", texts[c]) for c in codes}


def _upload_body(fields: dict[str, bool], repeated: bool) -> dict:
    binary = {"type": "string", "format": "binary"}
    props = {name: ({"type": "array", "items": binary} if repeated else binary) for name in fields}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": props, "required": [n for n, req in fields.items() if req]}
            }
        },
    }


def _service(summary: str, params: list, body: dict, ok: str, batch: bool, refine: bool = False) -> dict:
    codes = (400, 401, 409, 413, 422, 429, 503) if batch else (400, 401, 402, 409, 413, 422, 429, 503)
    if refine:
        codes = (*codes, 404)
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [*params, *ASYNC_PARAMS, IDEMPOTENCY_KEY],
            "requestBody": body,
            "responses": {
                "200": {**_json(ok, "processed"), "headers": SERVICE_HEADERS},
                "202": {**_json(ok, "accepted (async=true): running in the background"), "headers": SERVICE_HEADERS},
                **_errors(*codes),
            },
        }
    }


ASYNC_PARAMS = [
    {
        "name": "async",
        "in": "query",
        "required": False,
        "description": "true: checked and reserved now, answered 202 (status processing, output_url null), run in "
        "the background; GET /v1/jobs/{id} or /v1/batches/{id} returns the current shape",
        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
    },
    {
        "name": "webhook_url",
        "in": "query",
        "required": False,
        "description": "with async=true: POSTed the job's or batch's JSON when it ends, signed with the key's "
        "webhook secret (Maskserve-Signature: t=<unix>,v1=<hex HMAC-SHA256 of '<t>.<body>'>), retried with "
        "backoff; loopback, private and link-local targets are refused with 422",
        "schema": {"type": "string", "maxLength": 2048},
    },
]

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "safe retries: within 24 h the same key with the same request gets the stored response again "
    "(same job ids, nothing charged, Idempotent-Replayed: true); with a different request 422; while the first "
    "still runs 409",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}

SERVICE_HEADERS = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response of an earlier request with the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Credits-Charged": {
        "description": "credits this response charged (0 for a replayed Idempotency-Key)",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Credits-Remaining": {
        "description": "the key's balance after this request",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Model-Version": {
        "description": "variant/version of the model that served the images (e.g. `sam2.1_hiera_tiny/2`; "
        "comma-separated when a batch spanned versions; absent when only uploaded masks were used)",
        "schema": {"type": "string"},
    },
    "Server-Timing": {
        "description": "the stages the request went through, in milliseconds: decode (upload checked and read), "
        "encode (the image was new to the model tier: encoder and decoder) or embeddings;desc=cached and mask "
        "(the decoder alone), render (output image and encodings), store (files and the charge); a batch sums "
        "each stage over its images",
        "required": True,
        "schema": {"type": "string"},
    },
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    image = f"image (JPEG, PNG or WebP, at most {settings.max_upload_bytes // (1024 * 1024)} MB)"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "maskserve",
            "version": __version__,
            "description": f"SAM 2 segmentation and object extraction. Upload: {image}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Validation": _VALIDATION,
                "Result": _RESULT,
                "Single": _SINGLE,
                "Batch": _BATCH,
                "Box": _BOX,
                "InlineMask": _INLINE_MASK,
                "ObjectResult": _OBJECT_RESULT,
                "EverythingMask": _EVERYTHING_MASK,
                "Account": {
                    "type": "object",
                    "required": ["name", "key_prefix", "credits"],
                    "properties": {
                        "name": {"type": "string"},
                        "key_prefix": {"type": "string"},
                        "credits": {"type": "integer"},
                    },
                },
            },
        },
        "paths": {
            "/v1/services/image-segmentation": _service(
                "Segment one object, or several with objects; refine an earlier mask (1 credit)",
                [*_PROMPTS, _OBJECTS, _MASK_FORMAT, _REFINE],
                _upload_body({"file": True}, False),
                "Single",
                False,
                refine=True,
            ),
            "/v1/services/image-segmentation/everything": _service(
                "Segment everything: SAM's automatic mask generation; a label-map PNG and the masks (4 credits)",
                _EVERYTHING,
                _upload_body({"file": True}, False),
                "Single",
                False,
            ),
            "/v1/services/image-segmentation/batch": _service(
                f"Segment 1-{settings.max_batch} images with the same prompt (1 credit each)",
                [*_PROMPTS, _OBJECTS, _MASK_FORMAT],
                _upload_body({"files": True}, True),
                "Batch",
                True,
            ),
            "/v1/services/object-extraction": _service(
                "Cut out one object (or the union of objects) on a transparent background (2 credits)",
                [*_PROMPTS, _OBJECTS, *_EXTRACTION],
                _upload_body({"image": True, "mask": False}, False),
                "Single",
                False,
            ),
            "/v1/services/object-extraction/batch": _service(
                f"Cut out objects from 1-{settings.max_batch} images (2 credits each)",
                [*_PROMPTS, _OBJECTS, *_EXTRACTION],
                _upload_body({"images": True, "masks": False}, True),
                "Batch",
                True,
            ),
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job of this API key",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("Result", "the job"), **_errors(401, 404, 429)},
                }
            },
            "/v1/batches/{batch_id}": {
                "get": {
                    "summary": "A batch of this API key, its results in upload order",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("Batch", "the batch"), **_errors(401, 404, 429)},
                }
            },
            "/v1/account": {
                "get": {
                    "summary": "Name and credit balance of this API key",
                    "security": [{"bearer": []}],
                    "responses": {"200": _json("Account", "the account"), **_errors(401, 429)},
                }
            },
            "/v1/files/{job_id}": {
                "get": {
                    "summary": "An output image through its signed, expiring link (no API key)",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the image",
                            "content": {
                                "image/png": {"schema": {"type": "string", "format": "binary"}},
                                "image/webp": {"schema": {"type": "string", "format": "binary"}},
                                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        "302": {
                            "description": "with the s3 files backend in redirect mode: the image is at a "
                            "short-lived presigned URL on the object store",
                            "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                        },
                        **_errors(403, 404, 503),
                    },
                }
            },
            "/playground": {
                "get": {
                    "summary": "The click-to-segment playground page (HTML; it holds no secrets)",
                    "responses": {
                        "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/playground/{name}": {
                "get": {
                    "summary": "The playground's script and style sheet",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["playground.js", "playground.css", "index.html"]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "content": {
                                "text/javascript": {"schema": {"type": "string"}},
                                "text/css": {"schema": {"type": "string"}},
                                "text/html": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(404),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is alive",
                    "responses": {
                        "200": {"description": "alive", "content": {"application/json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Models ready and store reachable; model versions and weights source",
                    "responses": {
                        "200": {
                            "description": "ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "not ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this frontend "
                    "(requests, latency, credits, cache, Triton calls, event-loop lag)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }
