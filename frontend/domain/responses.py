"""The contract's JSON shapes (API.md "Responses", v1.1), declared once: the services build every body from
these models, and the OpenAPI document's schemas are generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from maskserve.frontend.domain.jobs import EverythingMask, InlineMask, JobStatus


class Shape(BaseModel):
    model_config = ConfigDict(frozen=True)

    def body(self) -> dict[str, Any]:
        """The JSON body: optional extras appear only when the job has them."""
        return self.model_dump(mode="json", exclude_unset=True)


class ObjectResult(Shape):
    index: int = Field(description="0-based position in the request's objects")
    output_url: str = Field(description="signed link to this object's mask PNG")
    score: float
    bbox: list[int] | None = Field(description="[x, y, w, h] in pixels of the oriented input; null when empty")
    area: int = Field(description="white pixels")
    mask: InlineMask | None = None


class Result(Shape):
    job_id: str
    status: JobStatus
    input_filename: str | None
    output_url: str | None
    processing_time_ms: float
    error: str | None
    original_width: int | None
    original_height: int | None
    output_width: int | None
    output_height: int | None
    credits_used: int
    image_id: str | None = Field(
        None, description="the image's handle (img_<32 hex>): send it as image_id instead of the upload"
    )
    score: float | None = Field(None, description="predicted IoU of the mask (with objects: their mean)")
    bbox: list[int] | None = Field(
        None, description="[x, y, w, h] of the white region in pixels of the oriented input; null when empty"
    )
    area: int | None = Field(None, description="white pixels")
    mask: InlineMask | None = None
    objects: list[ObjectResult] | None = None
    masks: list[EverythingMask] | None = None
    preview_url: str | None = Field(
        None, description="a propagation's preview: signed link to an MP4 of its frames with the masks overlaid"
    )


class Single(Shape):
    job_id: str
    status: JobStatus
    result: Result
    error: str | None


class Batch(Shape):
    batch_id: str
    status: JobStatus
    total_files: int
    completed: int
    failed: int
    results: list[Result]
    total_processing_time_ms: float
    total_credits_used: int
    error: str | None


class Account(Shape):
    name: str
    key_prefix: str
    credits: int


class Error(Shape):
    detail: str


class FieldErrorShape(Shape):
    loc: list[str] = Field(min_length=2, max_length=2)
    msg: str
    type: str


class Validation(Shape):
    detail: list[FieldErrorShape]


SCHEMAS: tuple[type[Shape], ...] = (Single, Batch, Result, ObjectResult, Account, Error, Validation)
"""The components of the OpenAPI document (their own references come along)."""
