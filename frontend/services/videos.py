"""Videos (API.md v1.2, "Video"): upload, prompts answered at once, propagation as a durable async job.

The frames are decoded once (PyAV), kept as JPEGs in the output storage, and sent to the model tier
as it asks for them; the prompts are kept in the store in order, so the model tier's state (a
replica's ``sam2_video``) can always be rebuilt. Propagation is ``services.propagation``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from maskserve.core.video_io import VideoAnswer, VideoCall, VideoPrompt
from maskserve.frontend import media
from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import Completion, Failure, JobDetails, JobKind, JobStatus, NewJob
from maskserve.frontend.domain.videos import (
    TOO_MANY_VIDEOS,
    UNKNOWN_VIDEO,
    VIDEO_ID,
    Video,
    VideoPromptQuery,
    new_video_id,
)
from maskserve.frontend.errors import (
    BadRequest,
    Conflict,
    DatabaseUnavailable,
    InferenceUnavailable,
    InsufficientCredits,
    NotFound,
    PayloadTooLarge,
    StorageUnavailable,
    Unavailable,
    ValidationFailed,
)
from maskserve.frontend.services import rendering, shapes
from maskserve.frontend.services.base import Deps, Service, ms_since
from maskserve.frontend.services.routing import ModelRouting

log = logging.getLogger(__name__)
PUT_CONCURRENCY = 8


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def state_body(video: Video) -> dict[str, Any]:
    return {
        "video_id": video.id,
        "frames": video.frames,
        "width": video.width,
        "height": video.height,
        "fps": video.fps,
        "objects": video.objects(),
        "last_job_id": video.last_job_id,
        "expires_at": _iso(video.expires_at),
    }


class VideoSessions(Service):
    def __init__(self, deps: Deps, routing: ModelRouting, frontend_id: str) -> None:
        super().__init__(deps)
        self.routing = routing
        self.owner = frontend_id
        self.runs: dict[str, asyncio.Task[None]] = {}

    def expiry(self, at: float) -> float:
        return at + self.settings.video_ttl_s

    # -- the video itself -------------------------------------------------------------------------
    async def upload(self, key: ApiKey, data: bytes, fps: float | None) -> dict[str, Any]:
        """Decode, keep the frames, open the video (201's body); 409 past the key's open videos."""
        try:
            decoded = await self.cpu(media.decode_video, data, self.settings.max_video_frames, fps)
        except media.VideoRejected as exc:
            if exc.status == 413:
                raise PayloadTooLarge(exc.message) from exc
            raise ValidationFailed.one("body", "file", exc.message) from exc
        video_id, at = new_video_id(), time.time()
        gate = asyncio.Semaphore(PUT_CONCURRENCY)

        async def put(index: int, jpeg: bytes) -> str:
            async with gate:
                return await self.files.put(f"{video_id}_{index:05d}", "jpg", jpeg)

        results = await asyncio.gather(*(put(i, f) for i, f in enumerate(decoded.frames)), return_exceptions=True)
        locations = [r for r in results if isinstance(r, str)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.discard(locations)
            raise failed[0]
        video = Video(
            video_id,
            key.id,
            len(locations),
            decoded.width,
            decoded.height,
            decoded.fps,
            at,
            self.expiry(at),
            locations,
        )
        try:
            created = await self.store.create_video(video, self.settings.max_open_videos, at)
        except DatabaseUnavailable:
            await self.discard(locations)
            raise
        if not created:
            await self.discard(locations)
            raise Conflict(TOO_MANY_VIDEOS)
        body = state_body(video)
        return {k: body[k] for k in ("video_id", "frames", "width", "height", "fps", "expires_at")}

    async def find(self, key: ApiKey, video_id: str) -> Video:
        """The key's open video, its expiry renewed by this use; 404 for anything else."""
        if not VIDEO_ID.match(video_id):
            raise NotFound(UNKNOWN_VIDEO)
        at = time.time()
        found = await self.store.get_video(video_id)
        if found is None or found.key_id != key.id or found.expires_at <= at:
            raise NotFound(UNKNOWN_VIDEO)
        renewed = await self.store.renew_video(video_id, at, self.expiry(at))
        if renewed is None:
            raise NotFound(UNKNOWN_VIDEO)
        return renewed

    async def delete(self, key: ApiKey, video_id: str) -> None:
        video = await self.find(key, video_id)
        await self.forget(video)

    async def forget(self, video: Video) -> None:
        """Free the video at once: its row, a running propagation (failed, refunded), the model tier, its frames."""
        gone = await self.store.forget_video(video.id)
        if gone is None:
            return
        if video.last_job_id is not None:
            run = self.runs.get(video.last_job_id)
            if run is not None:
                run.cancel()
            job = await self.store.get_job(video.last_job_id)
            if job is not None and job.kind is JobKind.PROPAGATION and job.status is JobStatus.PROCESSING:
                await self.store.fail_job(job.id, "The video was deleted")
        with contextlib.suppress(InferenceUnavailable, Unavailable):
            version = (await self.routing.route_video(video.id)).version
            await self.deps.inference.video(
                VideoCall("close", video.id, video.frames), _no_frames, _no_history, version
            )
        await self.discard(video.frame_locations)

    # -- the model tier ---------------------------------------------------------------------------
    async def call(self, video: Video, call: VideoCall, version: str) -> VideoAnswer:
        async def frames(indices: list[int]) -> dict[int, bytes]:
            found = {}
            for i in indices:
                data = await self.read_file(video.frame_locations[i])
                if data is None:
                    raise StorageUnavailable(f"frame {i} of {video.id} is gone")
                found[i] = data
            return found

        async def history() -> list[VideoPrompt]:
            return [p.for_model(video.width, video.height) for p in video.prompts]

        return await self.deps.inference.video(call, frames, history, version)

    # -- prompts ----------------------------------------------------------------------------------
    async def prompt(self, key: ApiKey, video_id: str, query: VideoPromptQuery, base_url: str) -> tuple[dict, int]:
        """One object's mask on one frame, at once (1 credit); → the body and the balance after."""
        video = await self.find(key, video_id)
        if query.frame >= video.frames:
            raise ValidationFailed.one("query", "frame", f"must be from 0 to {video.frames - 1}")
        job_id = uuid.uuid4().hex
        record = query.record(job_id)
        if record is None:
            raise BadRequest("A prompt needs 'points' or 'box'")
        if key.credits < 1:
            raise InsufficientCredits()
        started, at = time.perf_counter(), time.time()
        version = (await self.routing.route_video(video.id, key.pinned_version)).version
        call = VideoCall(
            "prompt", video.id, video.frames, len(video.prompts), prompt=record.for_model(video.width, video.height)
        )
        try:
            answer = await self.call(video, call, version)
        except InferenceUnavailable as exc:
            raise Unavailable(Failure.UNAVAILABLE) from exc
        rendered = await self.cpu(
            rendering.render_segmentation,
            answer.logits[:1],
            [float(answer.score[0])],
            video.height,
            video.width,
            False,
            "rle",
        )
        location = await self.files.put(job_id, "png", rendered.data)
        done = Completion(
            output_path=location,
            content_type="image/png",
            output_width=video.width,
            output_height=video.height,
            output_bytes=len(rendered.data),
            processing_ms=ms_since(started),
            expires_at=float(self.deps.signer.expiry()),
            model_version=version,
            details=JobDetails(result=rendered.result),
        )
        new = NewJob(job_id, JobKind.VIDEO_PROMPT, None, None, video.width, video.height, version)
        job, balance = await self.store.settle_job(key.id, new, done, at)
        if job is None or balance is None:
            await self.discard([location])
            raise InsufficientCredits()
        await self.store.add_video_prompt(video.id, record, time.time(), self.expiry(time.time()))
        result = rendered.result.public()
        body = {
            "job_id": job.id,
            "frame": query.frame,
            "object_id": query.object_id,
            "score": result.get("score"),
            "bbox": result.get("bbox"),
            "area": result.get("area"),
            "mask": result.get("mask"),
            "output_url": shapes.file_url(base_url, self.deps.signer, job.id, done.expires_at),
        }
        return body, balance

    async def sweep(self) -> int:
        """Forget the videos whose time ran out."""
        expired = await self.store.expired_videos(time.time())
        for video in expired:
            await self.forget(video)
        return len(expired)


async def _no_frames(indices: list[int]) -> dict[int, bytes]:
    return {}


async def _no_history() -> list[VideoPrompt]:
    return []
