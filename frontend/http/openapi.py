"""The OpenAPI 3.1 document, generated: each operation from its route (``http/routes.py``), each service
endpoint's parameters from its query declaration, every schema from the response models (``domain``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic.json_schema import models_json_schema

from maskserve import __version__
from maskserve.frontend.config import Settings
from maskserve.frontend.domain.requests import JSON, AsyncFields, Declared
from maskserve.frontend.domain.responses import SCHEMAS
from maskserve.frontend.http.operations import Body, Route
from maskserve.frontend.services.idempotency import HEADER, MAX_LENGTH

REF = "#/components/schemas/{model}"

ERROR_TEXTS = {
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

IDEMPOTENCY_KEY = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "safe retries: within 24 h the same key with the same request gets the stored response again "
    "(same job ids, nothing charged, Idempotent-Replayed: true); with a different request 422; while the first "
    "still runs 409",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": "^[ -~]+$"},
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


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _errors(codes: Sequence[int]) -> dict[str, Any]:
    return {str(c): _json("Validation" if c == 422 else "Error", ERROR_TEXTS[c]) for c in codes}


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A field's JSON schema as a query parameter's: no title, no null (an absent parameter is the null)."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
    options = schema.pop("anyOf", None)
    if options is not None:
        kept = [o for o in options if o.get("type") != "null"]
        schema.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def parameters(query: type[Declared]) -> list[dict[str, Any]]:
    """One query parameter per field of the declaration; JSON-valued ones travel as text."""
    props = query.model_json_schema(by_alias=True, ref_template=REF)["properties"]
    found = []
    for name, info in query.model_fields.items():
        alias = info.alias or name
        schema = {"type": "string"} if JSON in info.metadata else _query_schema(props[alias])
        found.append(
            {"name": alias, "in": "query", "required": False, "description": info.description or "", "schema": schema}
        )
    return found


def _body(body: Body) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    props = {name: ({"type": "array", "items": binary} if body.repeated else binary) for name in body.fields}
    schema = {"type": "object", "properties": props, "required": [n for n, req in body.fields.items() if req]}
    return {"required": body.required, "content": {"multipart/form-data": {"schema": schema}}}


def _operation(route: Route, max_batch: int) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary.format(max_batch=max_batch)}
    if route.secured:
        op["security"] = [{"bearer": []}]
    params = [*route.parameters, *(parameters(route.query) if route.query is not None else [])]
    if route.query is not None:
        params.append(IDEMPOTENCY_KEY)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = _body(route.body)
    responses: dict[str, Any] = dict(route.responses)
    if route.answer is not None:
        name = route.answer.__name__
        if route.query is not None:
            responses["200"] = {**_json(name, "processed"), "headers": SERVICE_HEADERS}
            if issubclass(route.query, AsyncFields):
                accepted = "accepted (async=true): running in the background"
                responses["202"] = {**_json(name, accepted), "headers": SERVICE_HEADERS}
        else:
            responses["200"] = _json(name, f"the {name.lower()}")
    responses.update(_errors(route.errors))
    op["responses"] = responses
    return op


def document(settings: Settings, routes: Sequence[Route]) -> dict[str, Any]:
    image = f"image (JPEG, PNG or WebP, at most {settings.max_upload_bytes // (1024 * 1024)} MB)"
    _, schemas = models_json_schema([(m, "serialization") for m in SCHEMAS], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, settings.max_batch)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "maskserve",
            "version": __version__,
            "description": f"SAM 2 segmentation and object extraction. Upload: {image}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas.get("$defs", {}),
        },
        "paths": paths,
    }
