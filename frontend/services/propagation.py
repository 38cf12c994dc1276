"""Propagation (API.md v1.2, "Video"): tracking a video's prompted objects through its frames, as a durable job.

A propagation is a reserved job of ``m`` credits (its frames) with a leased row that records its
progress: its frontend renews the lease frame by frame; when a frontend stops, another one takes
the run over from its start (``resume``), and the job ends once, completed and charged or failed
and refunded, its webhook owed in the transaction that ends it. Its result is a JSON document of
every frame's masks in processing order, and a preview video with the masks overlaid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from maskserve.core import encodings
from maskserve.core.video_io import VideoAnswer, VideoCall
from maskserve.frontend import media
from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import Completion, Failure, JobDetails, JobFiles, JobKind, JobStatus, NewJob
from maskserve.frontend.domain.videos import (
    UNKNOWN_VIDEO,
    PropagateQuery,
    Propagation,
    Video,
    progress_of,
    propagation_order,
)
from maskserve.frontend.errors import (
    BadRequest,
    Conflict,
    DatabaseUnavailable,
    InferenceUnavailable,
    InsufficientCredits,
    NotFound,
    StorageUnavailable,
    ValidationFailed,
)
from maskserve.frontend.services import rendering, shapes
from maskserve.frontend.services.base import Service, ms_since
from maskserve.frontend.services.videos import VideoSessions

log = logging.getLogger(__name__)
LEASE_S = 30.0
"""A propagation's lease: renewed with every frame; a frontend that stops loses it this long after."""


class Propagations(Service):
    def __init__(self, videos: VideoSessions) -> None:
        super().__init__(videos.deps)
        self.videos = videos
        self.routing = videos.routing
        self.owner = videos.owner
        self.runs = videos.runs

    async def propagate(self, key: ApiKey, video_id: str, query: PropagateQuery, base_url: str) -> dict[str, Any]:
        """Reserve the frames and start the run (202's body: the job shape with ``progress``)."""
        video = await self.videos.find(key, video_id)
        if not video.prompts:
            raise BadRequest("No prompts yet: add one with POST /v1/videos/{video_id}/prompts first")
        prompted = [p.frame for p in video.prompts]
        start = query.start_frame
        if start is None:
            start = max(prompted) if query.direction == "backward" else min(prompted)
        if start >= video.frames:
            raise ValidationFailed.one("query", "start_frame", f"must be from 0 to {video.frames - 1}")
        order, forward_from = propagation_order(query.direction, start, query.max_frames, video.frames)
        at = time.time()
        run = Propagation(
            uuid.uuid4().hex, video.id, key.id, order, forward_from, query.mask_format, query.webhook_url, base_url, at
        )
        version = (await self.routing.route_video(video.id, key.pinned_version)).version
        job = NewJob(
            run.job_id, JobKind.PROPAGATION, None, None, video.width, video.height, version, credits=len(order)
        )
        outcome = await self.store.start_propagation(run, job, self.owner, at + LEASE_S, at, self.videos.expiry(at))
        if outcome == "busy":
            raise Conflict("Another propagation is pending or running on this video")
        if outcome == "credits":
            raise InsufficientCredits()
        if outcome != "started":
            raise NotFound(UNKNOWN_VIDEO)
        self._start(run, version)
        return await self.job_body(run.job_id, base_url)

    def _start(self, run: Propagation, version: str) -> None:
        task = asyncio.ensure_future(self._run(run, version))
        self.runs[run.job_id] = task
        task.add_done_callback(lambda _: self.runs.pop(run.job_id, None))

    async def job_body(self, job_id: str, base_url: str) -> dict[str, Any]:
        """A propagation's job shape (``Single``) with its top-level ``progress``."""
        job = await self.store.get_job(job_id)
        run = await self.store.get_propagation(job_id)
        assert job is not None
        body = shapes.single_body(base_url, self.deps.signer, job)
        return {**body, "progress": progress_of(run, job.status is JobStatus.COMPLETED)}

    async def _run(self, run: Propagation, version: str) -> None:
        """Track every frame, write the JSON and the preview, then complete (charge) or fail (refund) once."""
        started = time.perf_counter()
        failure: str | None = None
        written: list[str] = []
        try:
            video = await self.store.get_video(run.video_id)
            if video is None:
                raise LookupError("The video was deleted")
            frames, masks = await self._track(video, run, version)
            done = await self._outputs(video, run, frames, masks, version, started, written)
            if not await self.store.complete_job(run.job_id, done):
                await self.discard(written)
        except asyncio.CancelledError:
            failure = "The video was deleted"
            raise
        except LookupError as exc:
            failure = str(exc)
        except InferenceUnavailable as exc:
            log.warning("propagation %s: %s", run.job_id, exc)
            failure = Failure.UNAVAILABLE
        except StorageUnavailable as exc:
            log.warning("propagation %s: %s", run.job_id, exc)
            failure = Failure.STORAGE
        except Exception:
            log.exception("propagation %s failed", run.job_id)
            failure = Failure.INTERNAL
        finally:
            await asyncio.shield(self._end(run, failure, written))

    async def _end(self, run: Propagation, failure: str | None, written: list[str]) -> None:
        if failure is not None:
            await self.store.fail_job(run.job_id, failure)
            await self.discard(written)
        webhook = None
        if run.webhook_url:
            body = await self.job_body(run.job_id, run.base_url or "")
            webhook = (run.key_id, run.webhook_url, json.dumps(body))
        await self.store.end_propagation(run.job_id, webhook)

    async def _track(
        self, video: Video, run: Propagation, version: str
    ) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
        """Every frame of the run in processing order: each prompted object's score, box, area and mask (and the
        masks as RLE by frame, for the preview)."""
        objects = sorted({p.object_id for p in video.prompts})
        out, masks = [], {}
        for index, frame in enumerate(run.order):
            reverse = index < run.forward_from
            begin = index in (0, run.forward_from)
            call = VideoCall(
                "track", video.id, video.frames, len(video.prompts), frame=frame, reverse=reverse, begin=begin
            )
            answer = await self.videos.call(video, call, version)
            described, masks[frame] = await self.cpu(
                _frame_objects, answer, objects, video.height, video.width, run.mask_format
            )
            out.append({"frame": frame, "objects": described})
            lease = time.time() + LEASE_S
            if not await self.store.propagation_progress(run.job_id, index + 1, self.owner, lease):
                raise LookupError("The propagation was stopped")
        return out, masks

    async def _outputs(
        self,
        video: Video,
        run: Propagation,
        frames: list[dict[str, Any]],
        masks: dict[int, list[dict[str, Any]]],
        version: str,
        started: float,
        written: list[str],
    ) -> Completion:
        document = json.dumps({"video_id": video.id, "frames": frames}).encode()
        written.append(await self.files.put(run.job_id, "json", document))
        jpegs = {frame: await self.read_file(video.frame_locations[frame]) for frame in masks}
        if any(v is None for v in jpegs.values()):
            raise StorageUnavailable("a frame of the video is gone")
        preview = await self.cpu(_preview, masks, jpegs, video)
        written.append(await self.files.put(f"{run.job_id}_preview", "mp4", preview))
        return Completion(
            output_path=written[0],
            content_type="application/json",
            output_width=video.width,
            output_height=video.height,
            output_bytes=len(document),
            processing_ms=ms_since(started),
            expires_at=float(self.deps.signer.expiry()),
            model_version=version,
            details=JobDetails(files=JobFiles(preview=written[1])),
        )

    async def resume(self, every: bool = False) -> None:
        """Take over the propagations whose frontend stopped (their lease ran out; ``every``: all of them, as a
        frontend alone on its database does at start) and run them from the start."""
        at = time.time()
        for run in await self.store.claim_propagations(self.owner, at + LEASE_S, math.inf if every else at):
            if run.job_id in self.runs:
                continue
            job = await self.store.get_job(run.job_id)
            if job is None or job.status is not JobStatus.PROCESSING:
                await self.store.end_propagation(run.job_id)
                continue
            log.info("propagation %s: taken over from a stopped frontend", run.job_id)
            self._start(run, job.model_version or "1")

    async def leases(self, interval_s: float = LEASE_S / 3) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.resume()
            except (DatabaseUnavailable, InferenceUnavailable, StorageUnavailable) as exc:
                log.warning("propagation takeover: %s", exc)


def _frame_objects(
    answer: VideoAnswer, objects: list[int], height: int, width: int, mask_format: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each prompted object on one frame (absent: area 0, box null): the JSON result's entries, and each
    mask as RLE for the preview."""
    by_id = {int(o): i for i, o in enumerate(answer.object_ids)}
    found, rles = [], []
    for obj in objects:
        i = by_id.get(obj)
        if i is None:
            mask, score = np.zeros((height, width), bool), 0.0
        else:
            mask = rendering.object_masks(answer.logits[i : i + 1], height, width)[0][0] > 0
            score = float(answer.score[i])
        rle = encodings.rle_encode(mask)
        entry: dict[str, Any] = {"object_id": obj, "score": round(score, 6)}
        entry |= {"bbox": encodings.bbox(mask), "area": encodings.area(mask)}
        entry["mask"] = {"format": "rle", **rle} if mask_format == "rle" else encodings.polygons(mask)
        found.append(entry)
        rles.append(rle)
    return found, rles


def _preview(masks: dict[int, list[dict[str, Any]]], jpegs: dict[int, bytes | None], video: Video) -> bytes:
    """The processed frames in video order, each object's mask overlaid."""

    def shown() -> Iterator[tuple[bytes, list[np.ndarray]]]:
        for frame in sorted(masks):
            data = jpegs[frame]
            assert data is not None
            yield data, [encodings.rle_decode(rle) for rle in masks[frame]]

    return media.encode_preview(shown(), video.fps, video.width, video.height)
