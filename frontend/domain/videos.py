"""Videos (API.md v1.2, "Video"): what the service keeps of one, and the parameters of its routes.

A video is its kept frames (JPEGs in the output storage), its size and rate, and the prompts
made on it, in order: what the model tier's state is rebuilt from when it is lost. A propagation
is a job of its own with a row that says how far it got (``progress``) and what it was asked.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from maskserve.core.signatures import MAX_PROMPT_POINTS, VIDEO_OBJECTS
from maskserve.core.video_io import VideoPrompt
from maskserve.frontend.domain.fields import (
    JSON,
    MAX_WEBHOOK_URL,
    WEBHOOK_URL,
    Box,
    Choice,
    Declared,
    Flag,
    Labels,
    Points,
    Ranged,
    check_webhook_url,
    refuse,
)

VIDEO_ID = re.compile(r"^vid_[0-9a-f]{32}$")
UNKNOWN_VIDEO = "Unknown or expired video_id"
TOO_MANY_VIDEOS = "Too many open videos: delete one first"


def new_video_id() -> str:
    return "vid_" + uuid.uuid4().hex


@dataclass(frozen=True)
class PromptRecord:
    """A prompt as the client sent it (frame pixels) and as the model tier takes it (1024 space)."""

    frame: int
    object_id: int
    points: list[list[float]]  # pixels of the frame, a box as its two corners
    labels: list[int]  # 0/1, or 2/3 for a box's corners
    clear: bool
    job_id: str

    def for_model(self, width: int, height: int) -> VideoPrompt:
        coords = [[x * 1024 / width, y * 1024 / height] for x, y in self.points]
        return VideoPrompt(self.frame, self.object_id, coords, list(self.labels), self.clear)


@dataclass(frozen=True)
class Video:
    id: str
    key_id: str
    frames: int
    width: int
    height: int
    fps: float
    created_at: float
    expires_at: float
    frame_locations: list[str]  # each kept frame's JPEG, in the output storage
    prompts: list[PromptRecord] = field(default_factory=list)
    last_job_id: str | None = None

    def objects(self) -> list[dict[str, Any]]:
        frames: dict[int, set[int]] = {}
        for p in self.prompts:
            frames.setdefault(p.object_id, set()).add(p.frame)
        return [{"object_id": o, "prompted_frames": sorted(frames[o])} for o in sorted(frames)]


@dataclass(frozen=True)
class Propagation:
    """A propagation job's request and progress (its money and status are the job's)."""

    job_id: str
    video_id: str
    key_id: str
    order: list[int]  # the frames it processes, in processing order
    forward_from: int  # the index in ``order`` from which frames are tracked forward (before it: backward)
    mask_format: str
    webhook_url: str | None
    base_url: str | None
    created_at: float
    frames_done: int = 0
    active: bool = True


def progress_of(run: Propagation | None, completed: bool) -> dict[str, int]:
    """A propagation job's ``progress`` (API.md v1.2), in every status."""
    if run is None:
        return {"frames_done": 0, "frames_total": 0}
    return {"frames_done": len(run.order) if completed else run.frames_done, "frames_total": len(run.order)}


def propagation_order(direction: str, start: int, max_frames: int | None, frames: int) -> tuple[list[int], int]:
    """The frames a propagation processes and where its forward part starts (``both``: backward, then forward,
    the start frame once)."""
    count = frames if max_frames is None else max_frames
    backward = list(range(start, max(start - count, -1), -1))
    forward = list(range(start, min(start + count, frames)))
    if direction == "backward":
        return backward, len(backward)
    if direction == "both":
        return backward + forward[1:], len(backward)
    return forward, 0


# -- the routes' parameters -------------------------------------------------------------------------
class VideoUploadQuery(Declared):
    fps: Annotated[float | None, Ranged(1, 60, float)] = Field(
        None, description="keep at most this many frames per second (default: every frame)"
    )


class VideoPromptQuery(Declared):
    frame: Annotated[int, Ranged(0, None)] = Field(description="0-based frame the prompt is on")
    object_id: Annotated[int, Ranged(1, VIDEO_OBJECTS)] = Field(description=f"the object, 1-{VIDEO_OBJECTS}")
    points: Annotated[Points, JSON, Field(description="JSON array of [x, y] frame pixel coordinates")] = None
    labels: Annotated[Labels, JSON, Field(description="JSON array of 0/1, same length as points (default all 1)")] = (
        None
    )
    box: Annotated[Box, JSON, Field(description="JSON array [x1, y1, x2, y2] with x1 < x2 and y1 < y2")] = None
    clear: Flag = Field(False, description="true: replace this object's earlier prompts on this frame")

    @model_validator(mode="after")
    def _consistent(self) -> VideoPromptQuery:
        name = type(self).__name__
        if self.labels is not None and self.points is None:
            raise refuse(name, "labels", "labels need points", self.labels)
        if self.labels is not None and self.points is not None and len(self.labels) != len(self.points):
            raise refuse(name, "labels", "labels must have the same length as points", self.labels)
        used = (0 if self.points is None else len(self.points)) + (0 if self.box is None else 2)
        if used > MAX_PROMPT_POINTS:
            raise refuse(name, "points", f"at most {MAX_PROMPT_POINTS} points (a box counts as 2)", self.points)
        return self

    def record(self, job_id: str) -> PromptRecord | None:
        """The prompt's points (a box as its corners, labelled 2 and 3 as SAM 2 takes them); None if empty."""
        points = [[float(x), float(y)] for x, y in self.points or []]
        labels = list(self.labels) if self.labels is not None else [1] * len(points)
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            points, labels = [[x1, y1], [x2, y2], *points], [2, 3, *labels]
        if not points:
            return None
        return PromptRecord(self.frame, self.object_id, points, labels, self.clear, job_id)


class PropagateQuery(Declared):
    direction: Annotated[str, Choice(("forward", "backward", "both"))] = Field(
        "forward", description="forward, backward, or both (backward then forward from start_frame)"
    )
    start_frame: Annotated[int | None, Ranged(0, None)] = Field(
        None, description="default: the earliest prompted frame (the latest for backward)"
    )
    max_frames: Annotated[int | None, Ranged(1, None)] = Field(
        None, description="frames per direction, the start frame included (default: to the end)"
    )
    webhook_url: Annotated[str | None, BeforeValidator(check_webhook_url)] = Field(
        None,
        max_length=MAX_WEBHOOK_URL,
        json_schema_extra={"pattern": WEBHOOK_URL.pattern},
        description="POSTed the job's JSON when it ends, signed as for other async jobs",
    )
    mask_format: Annotated[str, Choice(("rle", "polygons"))] = Field("rle", description="masks in the JSON result")
