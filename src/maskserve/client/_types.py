"""Typed results and errors of the maskserve API (API.md), as the SDK returns and raises them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """One image's result object."""

    job_id: str
    status: str
    input_filename: str | None
    output_url: str | None
    processing_time_ms: float
    error: str | None
    original_width: int | None
    original_height: int | None
    output_width: int | None
    output_height: int | None
    credits_used: int
    extras: dict[str, Any] = field(default_factory=dict)  # score, bbox, area, mask, objects, masks (v1.1)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def image_id(self) -> str | None:
        """The image's handle (v1.2): send it as ``image_id`` instead of the upload."""
        value = self.extras.get("image_id")
        return str(value) if value else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        known = {
            "job_id", "status", "input_filename", "output_url", "processing_time_ms", "error",
            "original_width", "original_height", "output_width", "output_height", "credits_used",
        }  # fmt: skip
        return cls(
            job_id=data["job_id"],
            status=data["status"],
            input_filename=data.get("input_filename"),
            output_url=data.get("output_url"),
            processing_time_ms=float(data.get("processing_time_ms") or 0.0),
            error=data.get("error"),
            original_width=data.get("original_width"),
            original_height=data.get("original_height"),
            output_width=data.get("output_width"),
            output_height=data.get("output_height"),
            credits_used=int(data.get("credits_used") or 0),
            extras={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class Call:
    """What a response said besides its body: cost, balance, model and where the time went."""

    credits_charged: int | None = None
    credits_remaining: int | None = None
    model_version: str | None = None
    server_timing: str | None = None
    replayed: bool = False

    @classmethod
    def from_headers(cls, headers: Any) -> Call:
        def number(name: str) -> int | None:
            value = headers.get(name)
            return int(value) if value is not None and value.isdigit() else None

        return cls(
            number("X-Credits-Charged"),
            number("X-Credits-Remaining"),
            headers.get("X-Model-Version"),
            headers.get("Server-Timing"),
            headers.get("Idempotent-Replayed") == "true",
        )


@dataclass(frozen=True)
class Job:
    """A single request's answer (``POST`` one image, or ``GET /v1/jobs/{id}``)."""

    job_id: str
    status: str
    result: Result
    error: str | None
    call: Call = field(default_factory=Call)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(frozen=True)
class Batch:
    """A batch's answer; ``batch_ids`` lists every underlying batch when the SDK split a large one."""

    batch_id: str
    status: str
    total_files: int
    completed: int
    failed: int
    results: list[Result]
    total_processing_time_ms: float
    total_credits_used: int
    error: str | None
    batch_ids: list[str] = field(default_factory=list)
    call: Call = field(default_factory=Call)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")

    @classmethod
    def from_json(cls, data: dict[str, Any], call: Call | None = None) -> Batch:
        return cls(
            batch_id=data["batch_id"],
            status=data["status"],
            total_files=int(data["total_files"]),
            completed=int(data["completed"]),
            failed=int(data["failed"]),
            results=[Result.from_json(r) for r in data["results"]],
            total_processing_time_ms=float(data["total_processing_time_ms"]),
            total_credits_used=int(data["total_credits_used"]),
            error=data.get("error"),
            batch_ids=[data["batch_id"]],
            call=call or Call(),
        )


@dataclass(frozen=True)
class Account:
    name: str
    key_prefix: str
    credits: int


class MaskserveError(Exception):
    """An answer outside 2xx; ``detail`` is the contract's ``detail`` (a string, or 422's list of field errors)."""

    status = 0

    def __init__(self, detail: Any, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.detail = detail
        self.status = status if status is not None else self.status
        self.retry_after = retry_after


class BadRequest(MaskserveError):
    status = 400


class Unauthorized(MaskserveError):
    status = 401


class InsufficientCredits(MaskserveError):
    status = 402


class Forbidden(MaskserveError):
    status = 403


class NotFound(MaskserveError):
    status = 404


class Conflict(MaskserveError):
    status = 409


class PayloadTooLarge(MaskserveError):
    status = 413


class ValidationError(MaskserveError):
    status = 422


class RateLimited(MaskserveError):
    status = 429


class Unavailable(MaskserveError):
    status = 503


ERRORS: dict[int, type[MaskserveError]] = {
    cls.status: cls
    for cls in (
        BadRequest, Unauthorized, InsufficientCredits, Forbidden, NotFound, Conflict,
        PayloadTooLarge, ValidationError, RateLimited, Unavailable,
    )
}  # fmt: skip
