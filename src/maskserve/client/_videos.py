"""Videos (API.md v1.2): open one, prompt on any frame, propagate, wait with progress, close.

The calls are built once here (``open_spec`` …) and sent by both clients (``VideoCalls`` for
``Client``, ``AsyncVideoCalls`` for ``AsyncClient``). Video routes take no ``Idempotency-Key``: an
upload is free, a prompt is charged only when answered, a propagation's 409 says it already runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from maskserve.client._core import ImageInput, Spec, query, read_image

Progress = Callable[[int, int], None]
"""Called with (frames done, frames total) while a propagation runs."""
ENDED = ("completed", "failed")


def open_spec(video: ImageInput, fps: float | None) -> Spec:
    name, data = read_image(video, "video")
    return Spec("POST", "/v1/videos", query(fps=fps), [("file", (name, data, "application/octet-stream"))])


def prompt_spec(
    video_id: str,
    frame: int,
    object_id: int,
    points: Sequence[Sequence[float]] | None,
    labels: Sequence[int] | None,
    box: Sequence[float] | None,
    clear: bool,
) -> Spec:
    params = query(frame=frame, object_id=object_id, points=points, labels=labels, box=box, clear=clear or None)
    return Spec("POST", f"/v1/videos/{video_id}/prompts", params)


def propagate_spec(video_id: str, **options: Any) -> Spec:
    return Spec("POST", f"/v1/videos/{video_id}/propagate", query(**options))


def job_spec(job_id: str) -> Spec:
    return Spec("GET", f"/v1/jobs/{job_id}")


def _heard(job: dict[str, Any], seen: list[int], progress: Progress | None) -> bool:
    """Tell ``progress`` of a change since ``seen[0]``; → whether the job has ended."""
    done = job.get("progress", {}).get("frames_done", 0)
    if progress is not None and done != seen[0]:
        progress(done, job.get("progress", {}).get("frames_total", 0))
        seen[0] = done
    return job["status"] in ENDED


class VideoCalls:
    """``Client``'s video calls (it provides ``_send``)."""

    _send: Callable[[Spec], tuple[Any, httpx.Headers]]

    def open_video(self, video: ImageInput, fps: float | None = None) -> dict[str, Any]:
        """Upload a video (MP4, WebM, MOV, animated GIF/WebP): its ``video_id``, frames, size and rate."""
        return self._send(open_spec(video, fps))[0]

    def video(self, video_id: str) -> dict[str, Any]:
        return self._send(Spec("GET", f"/v1/videos/{video_id}"))[0]

    def delete_video(self, video_id: str) -> None:
        self._send(Spec("DELETE", f"/v1/videos/{video_id}"))

    def video_prompt(
        self,
        video_id: str,
        frame: int,
        object_id: int = 1,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        clear: bool = False,
    ) -> dict[str, Any]:
        """Clicks or a box for one object on one frame: that frame's mask at once (1 credit)."""
        return self._send(prompt_spec(video_id, frame, object_id, points, labels, box, clear))[0]

    def propagate(self, video_id: str, **options: Any) -> dict[str, Any]:
        """Start tracking (``direction``, ``start_frame``, ``max_frames``, ``mask_format``, ``webhook_url``)."""
        return self._send(propagate_spec(video_id, **options))[0]

    def wait_propagation(
        self, job_id: str, timeout_s: float = 3600.0, interval_s: float = 0.5, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Poll the propagation until it ends; ``progress`` hears each change."""
        deadline, seen = time.monotonic() + timeout_s, [-1]
        while True:
            job = self._send(job_spec(job_id))[0]
            if _heard(job, seen, progress) or time.monotonic() > deadline:
                return job
            time.sleep(interval_s)


class AsyncVideoCalls:
    """``AsyncClient``'s video calls (it provides ``_send``)."""

    _send: Callable[[Spec], Any]

    async def open_video(self, video: ImageInput, fps: float | None = None) -> dict[str, Any]:
        return (await self._send(open_spec(video, fps)))[0]

    async def video(self, video_id: str) -> dict[str, Any]:
        return (await self._send(Spec("GET", f"/v1/videos/{video_id}")))[0]

    async def delete_video(self, video_id: str) -> None:
        await self._send(Spec("DELETE", f"/v1/videos/{video_id}"))

    async def video_prompt(
        self,
        video_id: str,
        frame: int,
        object_id: int = 1,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        clear: bool = False,
    ) -> dict[str, Any]:
        return (await self._send(prompt_spec(video_id, frame, object_id, points, labels, box, clear)))[0]

    async def propagate(self, video_id: str, **options: Any) -> dict[str, Any]:
        return (await self._send(propagate_spec(video_id, **options)))[0]

    async def wait_propagation(
        self, job_id: str, timeout_s: float = 3600.0, interval_s: float = 0.5, progress: Progress | None = None
    ) -> dict[str, Any]:
        deadline, seen = time.monotonic() + timeout_s, [-1]
        while True:
            job = (await self._send(job_spec(job_id)))[0]
            if _heard(job, seen, progress) or time.monotonic() > deadline:
                return job
            await asyncio.sleep(interval_s)
