"""Turning an HTTP request into typed values: the query through its endpoint's declaration, and
multipart uploads read as a stream with per-file limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiMapping
from pydantic import ValidationError

from maskserve.frontend.domain.requests import JSON, QUERY_NAMES, Declared
from maskserve.frontend.errors import BadRequest, FieldError, PayloadTooLarge, ValidationFailed
from maskserve.frontend.services.preparation import Upload

Query = MultiMapping[str]
Q = TypeVar("Q", bound=Declared)

MAX_PARTS = 2 * 50 + 16
MAX_FIELD_NAME = 64


def _json_fields(declaration: type[Declared]) -> set[str]:
    return {f.alias or name for name, f in declaration.model_fields.items() if JSON in f.metadata}


def _field_error(error: dict[str, object]) -> FieldError:
    """A Pydantic error as the contract's: ``loc`` names the query parameter; an error inside one of the
    ``objects`` says which object (and which of its fields)."""
    loc = [str(part) for part in error["loc"]]  # type: ignore[attr-defined]
    msg = str(error["msg"])
    if len(loc) > 1 and loc[1].isdigit():
        inner = ": ".join([*loc[2:], msg])
        msg = f"object {loc[1]}: {inner}"
    return FieldError("query", loc[0] if loc else "query", msg)


def parse_query(query: Query, declaration: type[Q]) -> Q:
    """The query string through the endpoint's declaration (``domain.requests``); 422 on anything malformed.

    A parameter that another endpoint takes is refused here (a client sending
    ``feather`` to segmentation would otherwise think it applied); unknown ones
    are ignored. Each parameter may be given once; JSON parameters are decoded.
    """
    names = [f.alias or name for name, f in declaration.model_fields.items()]
    for name in set(query):
        if name in QUERY_NAMES and name not in names:
            raise ValidationFailed.one("query", name, "not accepted by this endpoint")
    json_fields = _json_fields(declaration)
    values: dict[str, object] = {}
    errors = []
    for name in names:
        found = query.getall(name, [])
        if len(found) > 1:
            errors.append(FieldError("query", name, "given more than once"))
        elif found and name in json_fields:
            try:
                value = json.loads(found[0], parse_constant=lambda c: float("nan"))
            except (ValueError, RecursionError):
                value = None
            if not isinstance(value, list):
                errors.append(FieldError("query", name, "invalid JSON array"))
            values[name] = value
        elif found:
            values[name] = found[0]
    if errors:
        raise ValidationFailed(*errors)
    try:
        return declaration.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(*(_field_error(dict(e)) for e in exc.errors(include_url=False))) from None


def check_content_length(request: web.Request, max_files: int, max_file_bytes: int) -> None:
    """Refuse a body that cannot fit before reading any of it."""
    length = request.content_length
    if length is not None and length > max_files * max_file_bytes + 1024 * 1024:
        raise PayloadTooLarge(f"Upload too large: each file may be at most {max_file_bytes // (1024 * 1024)} MB")


async def read_uploads(
    request: web.Request, fields: set[str], max_file_bytes: int, timeout_s: float = 120.0, optional: bool = False
) -> dict[str, list[Upload]]:
    """Stream the multipart body within ``timeout_s``; keep the named file fields, enforce the size limit per file.

    ``optional``: the request may come without a body (an image by its handle): none is no file.
    """
    if optional and not request.body_exists:
        return {name: [] for name in fields}
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
            data, digest = await _read_limited(part, max_file_bytes, name)
            if name in uploads:
                uploads[name].append(Upload(name, part.filename, data, digest))
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"Malformed multipart body: {exc}") from None
    return uploads


async def _read_limited(part: BodyPartReader, limit: int, name: str) -> tuple[bytes, str]:
    """The part's bytes and their SHA-256, hashed as they arrive (no second pass over the upload)."""
    chunks = []
    size = 0
    digest = hashlib.sha256()
    while True:
        chunk = await part.read_chunk(256 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"File '{name}' is over the limit of {limit // (1024 * 1024)} MB")
        digest.update(chunk)
        chunks.append(chunk)
    return b"".join(chunks), digest.hexdigest()
