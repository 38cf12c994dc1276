"""What the sync and async clients share: building each call, reading each answer, the retry policy."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Union

from maskserve.client._types import ERRORS, Batch, Call, Job, MaskserveError, Result

ImageInput = Union[bytes, str, Path, IO[bytes]]  # noqa: UP007 (a runtime alias)
Point = Sequence[float]
MAX_BATCH = 50
RETRY_STATUSES = (429, 503)
SERVICES = "/v1/services"


@dataclass(frozen=True)
class Spec:
    """One HTTP call the SDK makes."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] = field(default_factory=list)
    idempotency_key: str | None = None  # POSTs to services: the same on every retry


def read_image(image: ImageInput, name: str = "image") -> tuple[str, bytes]:
    """(file name, bytes) of a path, bytes or binary file."""
    if isinstance(image, bytes):
        return name, image
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes()
    data = image.read()
    return Path(getattr(image, "name", name)).name, data


def _content_type(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def upload(field_name: str, image: ImageInput) -> tuple[str, tuple[str, bytes, str]]:
    name, data = read_image(image, field_name)
    return field_name, (name, data, _content_type(data))


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def query(**values: Any) -> dict[str, str]:
    """The query string's parameters: None left out, lists and objects as JSON, booleans as true/false."""
    return {name.rstrip("_"): _encode(v) for name, v in values.items() if v is not None}


def service(path: str, files: list[tuple[str, tuple[str, bytes, str]]], key: str | None, **params: Any) -> Spec:
    run_async = params.pop("run_async", False)
    return Spec(
        "POST",
        f"{SERVICES}/{path}",
        query(**params, async_=True if run_async else None),
        files,
        key or uuid.uuid4().hex,
    )


def chunks(items: Sequence[Any], size: int = MAX_BATCH) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def error_for(status: int, body: Any, headers: Any) -> MaskserveError:
    detail = body.get("detail", body) if isinstance(body, dict) else body
    retry = headers.get("Retry-After")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return ERRORS.get(status, MaskserveError)(detail, status, retry_after)


def job_from(body: dict[str, Any], headers: Any) -> Job:
    if "result" in body:
        return Job(
            body["job_id"],
            body["status"],
            Result.from_json(body["result"]),
            body.get("error"),
            Call.from_headers(headers),
        )
    result = Result.from_json(body)  # GET /v1/jobs/{id} answers the result object itself
    return Job(result.job_id, result.status, result, result.error, Call.from_headers(headers))


def merge(parts: list[Batch]) -> Batch:
    """Several batches the SDK sent for one call (more than 50 images), as one."""
    if len(parts) == 1:
        return parts[0]
    results = [r for p in parts for r in p.results]
    completed = sum(p.completed for p in parts)
    failed = sum(p.failed for p in parts)
    running = any(p.status in ("pending", "processing") for p in parts)
    status = "processing" if running else ("failed" if completed == 0 else "completed")
    last = parts[-1].call
    charged = sum(p.call.credits_charged or 0 for p in parts)
    call = Call(
        charged, last.credits_remaining, last.model_version, last.server_timing, all(p.call.replayed for p in parts)
    )
    return Batch(
        batch_id=parts[0].batch_id,
        status=status,
        total_files=sum(p.total_files for p in parts),
        completed=completed,
        failed=failed,
        results=results,
        total_processing_time_ms=sum(p.total_processing_time_ms for p in parts),
        total_credits_used=sum(p.total_credits_used for p in parts),
        error=f"All {failed} images failed" if status == "failed" else None,
        batch_ids=[b for p in parts for b in p.batch_ids],
        call=call,
    )


def retry_delay(status: int | None, attempt: int, retry_after: float | None, backoff_s: float) -> float:
    """429: what ``Retry-After`` says; 503 or no answer: exponential backoff."""
    if status == 429 and retry_after is not None:
        return min(retry_after, 120.0)
    return backoff_s * 2**attempt
